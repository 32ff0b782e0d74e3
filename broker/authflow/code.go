package authflow

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/internal/textcheck"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store"
)

// PendingAuthorization is a started authorization-code flow.
type PendingAuthorization struct {
	AuthorizeURL string
	State        string
	ExpiresAt    time.Time
	// RedirectURI is where the provider sends the browser: the caller's,
	// or the server's own callback.
	RedirectURI string
}

// Activation reports a newly installed family.
type Activation struct {
	FamilyID    string
	Generation  uint64
	ActivatedAt time.Time
	// Unproven: an imported refresh token was stored, but the provider
	// could not be reached to prove it; the broker retries the refresh.
	Unproven bool
}

// flowStart is what starting a flow takes from its credential.
type flowStart struct {
	// cred is the credential as this replica last saw it.
	cred Credential
	ep   provider.Endpoint
	// scopes are the flow's, resolved by credspec.Spec.FlowScopes.
	scopes []string
	// state names the flow, its place reserved by reserveFlow.
	state string
}

// beginFlow does what starting any flow for credential id (whose ID the
// caller validated) begins with, in this order: it loads the credential,
// resolves the flow's scopes, lets usable refuse a credential this kind of
// flow cannot use, then refuses a flow the store has no room for. Errors:
// *brokererr.InvalidArgumentError, brokererr.ErrNotFound, ErrTooManyFlows, *brokererr.UnavailableError,
// and usable's.
func (fl *Flows) beginFlow(ctx context.Context, id string, scopes []string, usable func(Credential, provider.Endpoint) error) (flowStart, error) {
	cred, err := fl.core.Credential(ctx, id, false)
	if err != nil {
		return flowStart{}, err
	}
	if err := checkRequestedScopes(ctx, cred.Scopes, scopes); err != nil {
		return flowStart{}, err
	}
	scopes, err = cred.ResolveScopes(scopes)
	if err != nil {
		return flowStart{}, err
	}
	ep := cred.Endpoint
	if err := usable(cred, ep); err != nil {
		return flowStart{}, err
	}
	state, err := fl.reserveFlow(ctx, id)
	if err != nil {
		return flowStart{}, err
	}
	return flowStart{cred: cred, ep: ep, scopes: scopes, state: state}, nil
}

// StartAuthorization begins an authorization-code flow with PKCE and returns
// where to send the user. An empty redirectURI, or the server's own
// callback URL spelled out (WithCallbackURL), means that callback, which
// completes the flow on whichever replica the browser reaches. Errors:
// *brokererr.InvalidArgumentError, brokererr.ErrNotFound, ErrCallbackNotConfigured,
// *brokererr.UnavailableError.
func (fl *Flows) StartAuthorization(ctx context.Context, id, redirectURI string, scopes []string) (PendingAuthorization, error) {
	if err := fl.core.ValidateID(id); err != nil {
		return PendingAuthorization{}, err
	}
	// The provider sends the browser to the server's callback whether the
	// caller named it or not: the callback must then accept the flow.
	serverCallback := redirectURI == "" || redirectURI == fl.opts.CallbackURL
	if serverCallback {
		if fl.opts.CallbackURL == "" {
			return PendingAuthorization{}, ErrCallbackNotConfigured
		}
		redirectURI = fl.opts.CallbackURL
	} else if err := fl.core.ValidateEndpointURL(redirectURI); err != nil {
		return PendingAuthorization{}, brokererr.Invalid("redirect_uri", "%v", err)
	}
	start, err := fl.beginFlow(ctx, id, scopes, func(_ Credential, ep provider.Endpoint) error {
		if ep.AuthorizeURL == "" {
			return brokererr.Invalid("spec.authorize_url", "the credential has no authorize endpoint; set it, or import a refresh token")
		}
		return nil
	})
	if err != nil {
		return PendingAuthorization{}, err
	}
	verifier, challenge := provider.NewPKCE()
	state := start.state
	u, err := fl.provider.AuthCodeURL(start.ep, start.cred.Client, redirectURI, state, challenge, start.scopes)
	if err != nil {
		return PendingAuthorization{}, brokererr.Invalid("spec.authorize_url", "%v", err)
	}
	now := fl.now()
	f := &Record{
		Kind: FlowAuthorizationCode, CredentialID: id, Incarnation: start.cred.Incarnation, Scopes: start.scopes,
		StartedAt: now, ExpiresAt: now.Add(fl.opts.Lifetime), Status: StatusPending, Actor: audit.Actor(ctx),
		Verifier: verifier, RedirectURI: redirectURI, AuthorizeURL: u, ServerCallback: serverCallback,
	}
	if _, err := fl.writeFlow(ctx, state, f, 0); err != nil {
		return PendingAuthorization{}, err
	}
	return *pendingAuthorization(state, f), nil
}

// pendingAuthorization is what a caller learns of a pending
// authorization-code flow.
func pendingAuthorization(state string, f *Record) *PendingAuthorization {
	return &PendingAuthorization{AuthorizeURL: f.AuthorizeURL, State: state, ExpiresAt: f.ExpiresAt, RedirectURI: f.RedirectURI}
}

// CompleteAuthorization exchanges the code of a started flow and installs the
// new family. The state is single use and bound to the credential (and to
// its incarnation: a credential deleted and created again since the flow
// started is brokererr.ErrNotFound). The exchange is not cut short by ctx: the
// provider spends the code when it sees it. Errors: *brokererr.InvalidArgumentError
// (also for a code the provider refused, or a grant without refresh token),
// brokererr.ErrNotFound, *AuthorizationError (the code was exchanged but the family
// could not be stored: the flow failed, start it again), *brokererr.UnavailableError
// (the flow stays pending: retry with the same code).
func (fl *Flows) CompleteAuthorization(ctx context.Context, id, state, code string) (Activation, error) {
	if err := fl.core.ValidateID(id); err != nil {
		return Activation{}, err
	}
	if !isFlowState(state) {
		return Activation{}, brokererr.Invalid("state", "malformed")
	}
	if err := validateCode(code); err != nil {
		return Activation{}, err
	}
	if _, err := fl.core.Credential(ctx, id, false); err != nil {
		return Activation{}, err
	}
	f, version, err := fl.usableCodeFlow(ctx, state)
	if err != nil {
		return Activation{}, err
	}
	if f.CredentialID != id {
		return Activation{}, errFlowUnknown()
	}
	return fl.redeemCode(ctx, state, f, version, code)
}

// Callback is what the provider's redirect brought to the server's callback
// endpoint: the state and either a code or an OAuth error code.
type Callback struct {
	State string
	Code  string
	Error string
}

// CompleteCallback finishes, on any replica, an authorization-code flow
// started for the server's own callback; the state alone names the flow and
// its credential. An error from the provider (access_denied: the user
// refused) ends the flow. Errors: *brokererr.InvalidArgumentError (an unknown, used or
// expired state; a code the provider refused; a grant without refresh
// token), brokererr.ErrNotFound (the credential was deleted), *AuthorizationError (the
// provider reported an error, or the family could not be stored),
// *brokererr.UnavailableError (provider: the flow stays pending, the same redirect may
// be retried).
func (fl *Flows) CompleteCallback(ctx context.Context, cb Callback) (Activation, error) {
	if !isFlowState(cb.State) {
		return Activation{}, errFlowUnknown()
	}
	f, version, err := fl.usableCodeFlow(ctx, cb.State)
	if err != nil {
		return Activation{}, err
	}
	if !f.ServerCallback {
		return Activation{}, errFlowUnknown()
	}
	if cb.Error != "" {
		reason, detail := FlowRefused, "the provider reported an error instead of a code"
		if code := oauthErrorCode(cb.Error); code != "" {
			detail += " (" + code + ")"
		}
		// Salesforce documents access-denied for the web server flow.
		if cb.Error == "access_denied" || cb.Error == "access-denied" {
			reason, detail = FlowDenied, DeniedDetail
		}
		failed := *f
		failed.fail(fl.now(), reason, detail)
		if _, err := fl.writeFlow(ctx, cb.State, &failed, version); err != nil {
			if errors.Is(err, store.ErrConflict) {
				return Activation{}, errFlowUnknown()
			}
			return Activation{}, err
		}
		fl.runner.signal()
		fl.log.InfoContext(ctx, "authorization refused at the provider", "credential", f.CredentialID, "reason", reason)
		return Activation{}, &AuthorizationError{Reason: reason, Detail: detail}
	}
	if err := validateCode(cb.Code); err != nil {
		return Activation{}, err
	}
	// The browser is anonymous: the family is audited in the name of who
	// started the flow.
	return fl.redeemCode(audit.WithActor(ctx, f.Actor), cb.State, f, version, cb.Code)
}

func validateCode(code string) error {
	if code == "" || len(code) > 4096 || !textcheck.Printable(code) {
		return brokererr.Invalid("code", "required, printable, at most 4096 bytes")
	}
	return nil
}

// oauthErrorCode returns an OAuth error code fit for a record and a log
// line ([a-z_-], at most 64 bytes), or "" for anything else: the value
// comes from a browser's query string.
func oauthErrorCode(s string) string {
	if len(s) > 64 {
		return ""
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c == '_' || c == '-') {
			return ""
		}
	}
	return s
}

// usableCodeFlow reads an authorization-code flow that may still be
// completed: pending, not being exchanged, not expired.
func (fl *Flows) usableCodeFlow(ctx context.Context, state string) (*Record, uint64, error) {
	f, version, err := fl.readFlow(ctx, state)
	if errors.Is(err, store.ErrNotFound) {
		return nil, 0, errFlowUnknown()
	}
	if err != nil {
		return nil, 0, err
	}
	if f.kind() != FlowAuthorizationCode || !f.Pending() || f.Consumed || !fl.now().Before(f.ExpiresAt) {
		return nil, 0, errFlowUnknown()
	}
	return f, version, nil
}

// redeemCode consumes the flow with check-and-set, so one code completes it
// once, exchanges the code and installs the family.
func (fl *Flows) redeemCode(ctx context.Context, state string, f *Record, version uint64, code string) (Activation, error) {
	used := *f
	used.Consumed, used.ConsumedAt = true, fl.now()
	version, err := fl.writeFlow(ctx, state, &used, version)
	if errors.Is(err, store.ErrConflict) {
		return Activation{}, errFlowUnknown()
	}
	if err != nil {
		return Activation{}, err
	}
	cred, err := fl.flowCredential(ctx, f)
	if err != nil {
		if errors.Is(err, brokererr.ErrNotFound) {
			fl.failFlow(ctx, state, FlowRefused, credentialGoneDetail)
		} else {
			fl.releaseCode(ctx, state, &used, version)
		}
		return Activation{}, err
	}
	// The provider spends the code when it sees it: a caller going away (a
	// closed browser tab, a client's deadline) must not abandon the
	// exchange half-way and lose the tokens it brings.
	xctx, xcancel := context.WithTimeout(context.WithoutCancel(ctx), codeExchangeTimeout)
	sent := fl.now()
	tok, err := fl.provider.ExchangeCode(xctx, cred.Endpoint, cred.Client, code, f.RedirectURI, f.Verifier)
	xcancel()
	tok.Restamp(sent)
	if err != nil {
		var pe *provider.Error
		if errors.As(err, &pe) && pe.Outcome == provider.OutcomeRejected {
			detail := fmt.Sprintf("the provider refused the authorization code (%s); start the flow again", pe.Code)
			if errors.Is(err, provider.ErrInvalidClient) {
				// The credential is wrong, not the code the caller brought.
				const doing = "when exchanging the authorization code"
				fl.failFlow(ctx, state, FlowRefused, fmt.Sprintf("the provider refused the client (%s): %s; then start the flow again", pe.Code, brokererr.ClientRejectedDetail(pe, doing)))
				return Activation{}, brokererr.ClientRejected(pe, doing)
			}
			fl.failFlow(ctx, state, FlowRefused, detail)
			return Activation{}, brokererr.Invalid("code", "%s", detail)
		}
		// Nothing usable came back: the flow stays pending, so the same
		// code may be tried again (the provider refuses it if it was spent).
		fl.releaseCode(ctx, state, &used, version)
		return Activation{}, &brokererr.UnavailableError{Component: brokererr.ComponentProvider, RetryAfter: time.Second, Err: err}
	}
	if tok.RefreshToken == "" {
		fl.failFlow(ctx, state, FlowRefused, noRefreshTokenDetail)
		return Activation{}, brokererr.Invalid("scopes", "%s", noRefreshTokenDetail)
	}
	// The code is spent: the tokens exist only here until stored, so a
	// caller giving up must not cut the install short.
	pctx, cancel := persistContext(ctx)
	defer cancel()
	act, err := fl.core.Install(pctx, f.CredentialID, f.Incarnation, tok)
	if err != nil {
		fl.revokeUninstalled(pctx, cred, tok)
	}
	if errors.Is(err, brokererr.ErrNotFound) {
		fl.failFlow(ctx, state, FlowRefused, credentialGoneDetail)
		return Activation{}, err
	}
	if err != nil {
		// The code is spent: retrying it cannot succeed, so the answer is
		// the flow's outcome, not a retryable unavailability.
		const detail = "the new family could not be stored (store unavailable); start the flow again"
		fl.log.ErrorContext(ctx, "AUTHORIZATION CODE EXCHANGED BUT THE NEW FAMILY COULD NOT BE STORED: start the flow again", "credential", f.CredentialID, "err", err)
		fl.failFlow(ctx, state, FlowRefused, detail)
		return Activation{}, &AuthorizationError{Reason: FlowRefused, Detail: detail}
	}
	fl.completeFlow(ctx, state, act)
	return act, nil
}

// revokeUninstalled revokes, best effort, the refresh token of a grant that
// could not be installed, so that no live family nobody holds is left at
// the provider. The grant came through cred's client.
func (fl *Flows) revokeUninstalled(ctx context.Context, cred Credential, tok *provider.Token) {
	if err := fl.provider.Revoke(ctx, cred.Endpoint, cred.Client, tok.RefreshToken); err != nil {
		fl.log.WarnContext(ctx, "could not revoke a grant that was not installed; it stays live at the provider until it expires", "err", err)
		return
	}
	fl.log.InfoContext(ctx, "revoked a grant that was not installed")
}

// credentialGoneDetail explains a flow whose credential was deleted, or
// deleted and created again, since it started.
const credentialGoneDetail = "the credential was deleted (or deleted and created again) since the flow started; start a new flow"

// codeExchangeTimeout bounds an authorization-code exchange, which runs on a
// context of its own (see redeemCode); it ends well within exchangeGrace.
const codeExchangeTimeout = 30 * time.Second

// flowCredential returns f's credential as stored, which must be the incarnation f was started for. It reads the
// store rather than trusting this replica's cached view: another replica may
// have deleted the credential and created it again (with no notice when it
// had no active family), and a flow must not complete into a credential it
// was not started for. Errors: brokererr.ErrNotFound (also for another incarnation),
// *brokererr.UnavailableError.
func (fl *Flows) flowCredential(ctx context.Context, f *Record) (Credential, error) {
	cred, err := fl.core.Credential(ctx, f.CredentialID, true)
	if err != nil {
		return Credential{}, err
	}
	if cred.Incarnation != f.Incarnation {
		return Credential{}, IncarnationGone(f.CredentialID)
	}
	return cred, nil
}

// IncarnationGone is brokererr.ErrNotFound for a flow's credential that was
// deleted and created again since the flow started.
func IncarnationGone(id string) error {
	return fmt.Errorf("%w: %s (deleted and created again since the flow started)", brokererr.ErrNotFound, id)
}

// releaseCode makes a consumed flow usable again after an exchange that
// did not happen. Best effort: a flow left consumed expires.
func (fl *Flows) releaseCode(ctx context.Context, state string, used *Record, version uint64) {
	pctx, cancel := persistContext(ctx)
	defer cancel()
	again := *used
	again.Consumed, again.ConsumedAt = false, time.Time{}
	if _, err := fl.writeFlow(pctx, state, &again, version); err != nil {
		fl.log.WarnContext(ctx, "could not release an authorization code flow for a retry", "credential", used.CredentialID, "err", err)
	}
}

func randomToken(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// isFlowState accepts what randomToken(32) produces.
func isFlowState(s string) bool {
	if len(s) != 43 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
