package broker

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store"
)

const maxRefreshTokenLen = 4096

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

// flowScopes resolves a flow's scopes (the credential's unless overridden)
// and refuses, for Salesforce, scopes that cannot yield a refresh token:
// rotation only applies to flows that issue one, and the user should not go
// through a flow that is bound to fail.
func flowScopes(spec Spec, scopes []string) ([]string, error) {
	if len(scopes) == 0 {
		scopes = spec.Scopes
	}
	if spec.ProviderKind == ProviderSalesforce && !grantsRefreshToken(scopes) {
		return nil, invalid("scopes", "Salesforce issues a refresh token only with the refresh_token (or offline_access) scope; add it")
	}
	if len(scopes) > 0 {
		check := spec
		check.Scopes = scopes
		if err := check.validate(); err != nil {
			return nil, err
		}
	}
	return append([]string(nil), scopes...), nil
}

// flowStart is what starting a flow takes from its credential.
type flowStart struct {
	// cred is the credential as this replica last saw it.
	cred *credentialRecord
	ep   provider.Endpoint
	// scopes are the flow's, resolved by flowScopes.
	scopes []string
	// state names the flow, its place reserved by reserveFlow.
	state string
}

// beginFlow does what starting any flow for credential id (whose ID the
// caller validated) begins with, in this order: it loads the credential,
// resolves the flow's scopes, lets usable refuse a credential this kind of
// flow cannot use, then refuses a flow the store has no room for. Errors:
// *InvalidArgumentError, ErrNotFound, ErrTooManyFlows, *UnavailableError,
// and usable's.
func (b *Broker) beginFlow(ctx context.Context, id string, scopes []string, usable func(Spec, provider.Endpoint) error) (flowStart, error) {
	e, err := b.entry(ctx, id)
	if err != nil {
		return flowStart{}, err
	}
	cred := e.view.Load().cred
	if err := checkRequestedScopes(ctx, cred.Spec.Scopes, scopes); err != nil {
		return flowStart{}, err
	}
	scopes, err = flowScopes(cred.Spec, scopes)
	if err != nil {
		return flowStart{}, err
	}
	ep := cred.Spec.endpoint()
	if err := usable(cred.Spec, ep); err != nil {
		return flowStart{}, err
	}
	state, err := b.reserveFlow(ctx, id)
	if err != nil {
		return flowStart{}, err
	}
	return flowStart{cred: cred, ep: ep, scopes: scopes, state: state}, nil
}

// StartAuthorization begins an authorization-code flow with PKCE and returns
// where to send the user. An empty redirectURI, or the server's own
// callback URL spelled out (WithCallbackURL), means that callback, which
// completes the flow on whichever replica the browser reaches. Errors:
// *InvalidArgumentError, ErrNotFound, ErrCallbackNotConfigured,
// *UnavailableError.
func (b *Broker) StartAuthorization(ctx context.Context, id, redirectURI string, scopes []string) (PendingAuthorization, error) {
	if err := b.validateID(id); err != nil {
		return PendingAuthorization{}, err
	}
	// The provider sends the browser to the server's callback whether the
	// caller named it or not: the callback must then accept the flow.
	serverCallback := redirectURI == "" || redirectURI == b.opts.flow.callbackURL
	if serverCallback {
		if b.opts.flow.callbackURL == "" {
			return PendingAuthorization{}, ErrCallbackNotConfigured
		}
		redirectURI = b.opts.flow.callbackURL
	} else if err := ValidateEndpointURL(redirectURI); err != nil {
		return PendingAuthorization{}, invalid("redirect_uri", "%v", err)
	}
	start, err := b.beginFlow(ctx, id, scopes, func(_ Spec, ep provider.Endpoint) error {
		if ep.AuthorizeURL == "" {
			return invalid("spec.authorize_url", "the credential has no authorize endpoint; set it, or import a refresh token")
		}
		return nil
	})
	if err != nil {
		return PendingAuthorization{}, err
	}
	verifier, challenge := provider.NewPKCE()
	state := start.state
	u, err := b.provider.AuthCodeURL(start.ep, start.cred.Spec.clientCredentials(), redirectURI, state, challenge, start.scopes)
	if err != nil {
		return PendingAuthorization{}, invalid("spec.authorize_url", "%v", err)
	}
	now := b.opts.now()
	f := &flowRecord{
		Kind: FlowAuthorizationCode, CredentialID: id, Incarnation: start.cred.Incarnation, Scopes: start.scopes,
		StartedAt: now, ExpiresAt: now.Add(b.opts.flowLifetime), Status: flowPending, Actor: audit.Actor(ctx),
		Verifier: verifier, RedirectURI: redirectURI, AuthorizeURL: u, ServerCallback: serverCallback,
	}
	if _, err := b.writeFlow(ctx, state, f, 0); err != nil {
		return PendingAuthorization{}, err
	}
	return *pendingAuthorization(state, f), nil
}

// pendingAuthorization is what a caller learns of a pending
// authorization-code flow.
func pendingAuthorization(state string, f *flowRecord) *PendingAuthorization {
	return &PendingAuthorization{AuthorizeURL: f.AuthorizeURL, State: state, ExpiresAt: f.ExpiresAt, RedirectURI: f.RedirectURI}
}

// CompleteAuthorization exchanges the code of a started flow and installs the
// new family. The state is single use and bound to the credential (and to
// its incarnation: a credential deleted and created again since the flow
// started is ErrNotFound). The exchange is not cut short by ctx: the
// provider spends the code when it sees it. Errors: *InvalidArgumentError
// (also for a code the provider refused, or a grant without refresh token),
// ErrNotFound, *AuthorizationError (the code was exchanged but the family
// could not be stored: the flow failed, start it again), *UnavailableError
// (the flow stays pending: retry with the same code).
func (b *Broker) CompleteAuthorization(ctx context.Context, id, state, code string) (Activation, error) {
	if err := b.validateID(id); err != nil {
		return Activation{}, err
	}
	if !isFlowState(state) {
		return Activation{}, invalid("state", "malformed")
	}
	if err := validateCode(code); err != nil {
		return Activation{}, err
	}
	if _, err := b.entry(ctx, id); err != nil {
		return Activation{}, err
	}
	f, version, err := b.usableCodeFlow(ctx, state)
	if err != nil {
		return Activation{}, err
	}
	if f.CredentialID != id {
		return Activation{}, errFlowUnknown()
	}
	return b.redeemCode(ctx, state, f, version, code)
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
// refused) ends the flow. Errors: *InvalidArgumentError (an unknown, used or
// expired state; a code the provider refused; a grant without refresh
// token), ErrNotFound (the credential was deleted), *AuthorizationError (the
// provider reported an error, or the family could not be stored),
// *UnavailableError (provider: the flow stays pending, the same redirect may
// be retried).
func (b *Broker) CompleteCallback(ctx context.Context, cb Callback) (Activation, error) {
	if !isFlowState(cb.State) {
		return Activation{}, errFlowUnknown()
	}
	f, version, err := b.usableCodeFlow(ctx, cb.State)
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
			reason, detail = FlowDenied, deniedDetail
		}
		failed := *f
		failed.fail(b.opts.now(), reason, detail)
		if _, err := b.writeFlow(ctx, cb.State, &failed, version); err != nil {
			if errors.Is(err, store.ErrConflict) {
				return Activation{}, errFlowUnknown()
			}
			return Activation{}, err
		}
		b.flows.signal()
		b.log.InfoContext(ctx, "authorization refused at the provider", "credential", f.CredentialID, "reason", reason)
		return Activation{}, &AuthorizationError{Reason: reason, Detail: detail}
	}
	if err := validateCode(cb.Code); err != nil {
		return Activation{}, err
	}
	// The browser is anonymous: the family is audited in the name of who
	// started the flow.
	return b.redeemCode(audit.WithActor(ctx, f.Actor), cb.State, f, version, cb.Code)
}

func validateCode(code string) error {
	if code == "" || len(code) > 4096 || !printable(code) {
		return invalid("code", "required, printable, at most 4096 bytes")
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
func (b *Broker) usableCodeFlow(ctx context.Context, state string) (*flowRecord, uint64, error) {
	f, version, err := b.readFlow(ctx, state)
	if errors.Is(err, store.ErrNotFound) {
		return nil, 0, errFlowUnknown()
	}
	if err != nil {
		return nil, 0, err
	}
	if f.kind() != FlowAuthorizationCode || !f.pending() || f.Consumed || !b.opts.now().Before(f.ExpiresAt) {
		return nil, 0, errFlowUnknown()
	}
	return f, version, nil
}

// redeemCode consumes the flow with check-and-set, so one code completes it
// once, exchanges the code and installs the family.
func (b *Broker) redeemCode(ctx context.Context, state string, f *flowRecord, version uint64, code string) (Activation, error) {
	used := *f
	used.Consumed, used.ConsumedAt = true, b.opts.now()
	version, err := b.writeFlow(ctx, state, &used, version)
	if errors.Is(err, store.ErrConflict) {
		return Activation{}, errFlowUnknown()
	}
	if err != nil {
		return Activation{}, err
	}
	e, cred, err := b.flowCredential(ctx, f)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			b.failFlow(ctx, state, FlowRefused, credentialGoneDetail)
		} else {
			b.releaseCode(ctx, state, &used, version)
		}
		return Activation{}, err
	}
	spec := cred.Spec
	// The provider spends the code when it sees it: a caller going away (a
	// closed browser tab, a client's deadline) must not abandon the
	// exchange half-way and lose the tokens it brings.
	xctx, xcancel := context.WithTimeout(context.WithoutCancel(ctx), codeExchangeTimeout)
	sent := b.opts.now()
	tok, err := b.provider.ExchangeCode(xctx, spec.endpoint(), spec.clientCredentials(), code, f.RedirectURI, f.Verifier)
	xcancel()
	restamp(tok, sent)
	if err != nil {
		var pe *provider.Error
		if errors.As(err, &pe) && pe.Outcome == provider.OutcomeRejected {
			detail := fmt.Sprintf("the provider refused the authorization code (%s); start the flow again", pe.Code)
			b.failFlow(ctx, state, FlowRefused, detail)
			return Activation{}, invalid("code", "%s", detail)
		}
		// Nothing usable came back: the flow stays pending, so the same
		// code may be tried again (the provider refuses it if it was spent).
		b.releaseCode(ctx, state, &used, version)
		return Activation{}, &UnavailableError{Component: ComponentProvider, RetryAfter: time.Second, Err: err}
	}
	if tok.RefreshToken == "" {
		b.failFlow(ctx, state, FlowRefused, noRefreshTokenDetail)
		return Activation{}, invalid("scopes", "%s", noRefreshTokenDetail)
	}
	// The code is spent: the tokens exist only here until stored, so a
	// caller giving up must not cut the install short.
	pctx, cancel := persistContext(ctx)
	defer cancel()
	act, err := b.installFamily(pctx, e, f.Incarnation, tok.RefreshToken, tok, true)
	if err != nil {
		b.revokeUninstalled(pctx, spec, tok)
	}
	if errors.Is(err, ErrNotFound) {
		b.failFlow(ctx, state, FlowRefused, credentialGoneDetail)
		return Activation{}, err
	}
	if err != nil {
		// The code is spent: retrying it cannot succeed, so the answer is
		// the flow's outcome, not a retryable unavailability.
		const detail = "the new family could not be stored (store unavailable); start the flow again"
		b.log.ErrorContext(ctx, "AUTHORIZATION CODE EXCHANGED BUT THE NEW FAMILY COULD NOT BE STORED: start the flow again", "credential", e.id, "err", err)
		b.failFlow(ctx, state, FlowRefused, detail)
		return Activation{}, &AuthorizationError{Reason: FlowRefused, Detail: detail}
	}
	b.completeFlow(ctx, state, act)
	return act, nil
}

// revokeUninstalled revokes, best effort, the refresh token of a grant that
// could not be installed, so that no live family nobody holds is left at
// the provider. The grant came through spec's client.
func (b *Broker) revokeUninstalled(ctx context.Context, spec Spec, tok *provider.Token) {
	if err := b.provider.Revoke(ctx, spec.endpoint(), spec.clientCredentials(), tok.RefreshToken); err != nil {
		b.log.WarnContext(ctx, "could not revoke a grant that was not installed; it stays live at the provider until it expires", "err", err)
		return
	}
	b.log.InfoContext(ctx, "revoked a grant that was not installed")
}

// credentialGoneDetail explains a flow whose credential was deleted, or
// deleted and created again, since it started.
const credentialGoneDetail = "the credential was deleted (or deleted and created again) since the flow started; start a new flow"

// errIncarnationGone is ErrNotFound for a flow's credential that was
// deleted and created again since the flow started.
func errIncarnationGone(id string) error {
	return fmt.Errorf("%w: %s (deleted and created again since the flow started)", ErrNotFound, id)
}

// codeExchangeTimeout bounds an authorization-code exchange, which runs on a
// context of its own (see redeemCode); it ends well within exchangeGrace.
const codeExchangeTimeout = 30 * time.Second

// flowCredential returns the entry of f's credential and the credential as
// stored, which must be the incarnation f was started for. It reads the
// store rather than trusting this replica's cached view: another replica may
// have deleted the credential and created it again (with no notice when it
// had no active family), and a flow must not complete into a credential it
// was not started for. Errors: ErrNotFound (also for another incarnation),
// *UnavailableError.
func (b *Broker) flowCredential(ctx context.Context, f *flowRecord) (*entry, *credentialRecord, error) {
	e, err := b.entry(ctx, f.CredentialID)
	if err != nil {
		return nil, nil, err
	}
	cred, _, err := b.readCredential(ctx, f.CredentialID)
	if err != nil {
		return nil, nil, err
	}
	if cred.Incarnation != f.Incarnation {
		return nil, nil, errIncarnationGone(f.CredentialID)
	}
	return e, cred, nil
}

// releaseCode makes a consumed flow usable again after an exchange that
// did not happen. Best effort: a flow left consumed expires.
func (b *Broker) releaseCode(ctx context.Context, state string, used *flowRecord, version uint64) {
	pctx, cancel := persistContext(ctx)
	defer cancel()
	again := *used
	again.Consumed, again.ConsumedAt = false, time.Time{}
	if _, err := b.writeFlow(pctx, state, &again, version); err != nil {
		b.log.WarnContext(ctx, "could not release an authorization code flow for a retry", "credential", used.CredentialID, "err", err)
	}
}

// ImportRefreshToken installs a refresh token obtained elsewhere, then
// refreshes at once to prove it works. When the provider cannot be reached
// for that refresh the token stays stored, unproven (Activation.Unproven),
// and the broker retries the refresh: importing it again would gain
// nothing. Errors: *InvalidArgumentError, ErrNotFound, ErrReauthRequired
// (the provider refused it), ErrClientRejected, *UnavailableError (the
// store; or the provider before anything was stored).
func (b *Broker) ImportRefreshToken(ctx context.Context, id, refreshToken string) (Activation, error) {
	if err := b.validateID(id); err != nil {
		return Activation{}, err
	}
	if refreshToken == "" || len(refreshToken) > maxRefreshTokenLen || !printable(refreshToken) {
		return Activation{}, invalid("refresh_token", "required, printable, at most %d bytes", maxRefreshTokenLen)
	}
	e, err := b.entry(ctx, id)
	if err != nil {
		return Activation{}, err
	}
	// The replaced family is not revoked at the provider: an imported token
	// may belong to that very family (a re-import), and revoking it would
	// kill the token just installed.
	act, err := b.installFamily(ctx, e, "", refreshToken, nil, false)
	if err != nil {
		return Activation{}, err
	}
	// Stored first; now prove it. A refused token revokes the family just
	// installed and says so.
	stale := act.Generation
	v, err := b.refresh(ctx, e, func(v *view) bool { return v.fam.FamilyID == act.FamilyID && v.fam.Generation == stale })
	var ue *UnavailableError
	if errors.As(err, &ue) && ue.Component == ComponentProvider {
		b.log.WarnContext(ctx, "imported refresh token stored, not yet proven: the provider could not be reached; retrying", "credential", id, "family", act.FamilyID, "err", err)
		act.Unproven = true
		return act, nil
	}
	if err != nil {
		return Activation{}, err
	}
	act.Generation = v.fam.Generation
	return act, nil
}

// installFamily stores a new family for the credential, replacing the old
// one, and announces it. With revokeOld the old family is revoked at the
// provider (best effort), leaving no second live family behind. A non-empty
// incarnation must be the stored credential's: a flow's grant never goes
// into a credential deleted and created again since the flow started
// (ErrNotFound).
func (b *Broker) installFamily(ctx context.Context, e *entry, incarnation, refreshToken string, tok *provider.Token, revokeOld bool) (Activation, error) {
	now := b.opts.now()
	fam := &familyRecord{
		Format:       recordFormat,
		Status:       StatusActive,
		FamilyID:     randomHex(12),
		RefreshToken: refreshToken,
		StartedAt:    now,
		// Without the grant's tokens (an import), nothing has shown the
		// provider accepts this refresh token yet.
		Unproven: tok == nil,
	}
	var old *view
	if _, err := b.updateFamily(ctx, e, nil, func(cur *view) (*familyRecord, error) {
		if incarnation != "" && cur.cred.Incarnation != incarnation {
			return nil, errIncarnationGone(e.id)
		}
		if tok != nil {
			fam.Generation = 1
			fam.LastRefreshAt = now
			fam.Access = b.newAccessToken(cur.cred.Spec, nil, tok, now)
			if note := lifetimeNote(cur.cred.Spec, tok); note != "" {
				fam.LastError, fam.LastErrorAt = note, now
			}
		}
		old = cur
		return cur.fam.replacedBy(fam)
	}); err != nil {
		return Activation{}, err
	}
	e.mu.Lock()
	e.rescue.Store(nil)
	e.lastErr, e.retryAt = nil, time.Time{}
	e.mu.Unlock()
	if live := liveToken(old.fam); revokeOld && live != "" {
		if err := b.provider.Revoke(ctx, old.cred.Spec.endpoint(), old.cred.Spec.clientCredentials(), live); err != nil {
			b.log.WarnContext(ctx, "could not revoke the replaced family at the provider", "credential", e.id, "family", old.fam.FamilyID, "err", err)
		}
	}
	b.log.InfoContext(ctx, "new token family installed", "credential", e.id, "family", fam.FamilyID)
	b.announce(ctx, e.id, fam, audit.Event{Action: audit.ActionReauthenticated}, &Notice{Kind: NoticeFamilyActivated, DetectedAt: now})
	return Activation{FamilyID: fam.FamilyID, Generation: fam.Generation, ActivatedAt: now}, nil
}

func randomToken(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
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
