package broker

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
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
}

// Activation reports a newly installed family.
type Activation struct {
	FamilyID    string
	Generation  uint64
	ActivatedAt time.Time
}

// flowRecord is a pending authorization-code flow, stored so the completion
// may reach any replica. The verifier is a secret: stores encrypt records.
type flowRecord struct {
	Format       int       `json:"format"`
	CredentialID string    `json:"credential_id"`
	Verifier     string    `json:"verifier"`
	RedirectURI  string    `json:"redirect_uri"`
	Scopes       []string  `json:"scopes,omitempty"`
	ExpiresAt    time.Time `json:"expires_at"`
	Consumed     bool      `json:"consumed,omitempty"`
}

// StartAuthorization begins an authorization-code flow with PKCE and returns
// where to send the user. Errors: *InvalidArgumentError, ErrNotFound,
// *UnavailableError.
func (b *Broker) StartAuthorization(ctx context.Context, id, redirectURI string, scopes []string) (PendingAuthorization, error) {
	if err := b.validateID(id); err != nil {
		return PendingAuthorization{}, err
	}
	if err := ValidateEndpointURL(redirectURI); err != nil {
		return PendingAuthorization{}, invalid("redirect_uri", "%v", err)
	}
	e, err := b.entry(ctx, id)
	if err != nil {
		return PendingAuthorization{}, err
	}
	spec := e.view.Load().cred.Spec
	if len(scopes) == 0 {
		scopes = spec.Scopes
	} else {
		check := spec
		check.Scopes = scopes
		if err := check.validate(); err != nil {
			return PendingAuthorization{}, err
		}
	}
	// Rotation only applies to flows that issue refresh tokens: refuse a
	// flow that cannot yield one before the user goes through it.
	if spec.ProviderKind == ProviderSalesforce && !grantsRefreshToken(scopes) {
		return PendingAuthorization{}, invalid("scopes", "Salesforce issues a refresh token only with the refresh_token (or offline_access) scope; add it")
	}
	ep := spec.endpoint()
	if ep.AuthorizeURL == "" {
		return PendingAuthorization{}, invalid("spec.authorize_url", "the credential has no authorize endpoint; set it, or import a refresh token")
	}
	verifier, challenge := provider.NewPKCE()
	state := randomToken(32)
	u, err := b.provider.AuthCodeURL(ep, spec.clientCredentials(), redirectURI, state, challenge, scopes)
	if err != nil {
		return PendingAuthorization{}, invalid("spec.authorize_url", "%v", err)
	}
	expires := b.opts.now().Add(b.opts.flowLifetime)
	raw, err := encodeRecord(flowRecord{Format: recordFormat, CredentialID: id, Verifier: verifier, RedirectURI: redirectURI, Scopes: scopes, ExpiresAt: expires})
	if err != nil {
		return PendingAuthorization{}, err
	}
	if _, err := b.store.Put(ctx, flowKey(state), raw, 0); err != nil {
		return PendingAuthorization{}, storeUnavailable(err)
	}
	return PendingAuthorization{AuthorizeURL: u, State: state, ExpiresAt: expires}, nil
}

// CompleteAuthorization exchanges the code of a started flow and installs the
// new family. The state is single use and bound to the credential. Errors:
// *InvalidArgumentError, ErrNotFound, ErrReauthRequired (the provider refused
// the code), *UnavailableError.
func (b *Broker) CompleteAuthorization(ctx context.Context, id, state, code string) (Activation, error) {
	if err := b.validateID(id); err != nil {
		return Activation{}, err
	}
	if !isFlowState(state) {
		return Activation{}, invalid("state", "malformed")
	}
	if code == "" || len(code) > 4096 || !printable(code) {
		return Activation{}, invalid("code", "required, printable, at most 4096 bytes")
	}
	e, err := b.entry(ctx, id)
	if err != nil {
		return Activation{}, err
	}
	flow, err := b.consumeFlow(ctx, id, state)
	if err != nil {
		return Activation{}, err
	}
	spec := e.view.Load().cred.Spec
	tok, err := b.provider.ExchangeCode(ctx, spec.endpoint(), spec.clientCredentials(), code, flow.RedirectURI, flow.Verifier)
	if err != nil {
		var pe *provider.Error
		if errors.As(err, &pe) && pe.Outcome == provider.OutcomeRejected {
			return Activation{}, invalid("code", "the provider refused the authorization code (%s); start the flow again", pe.Code)
		}
		return Activation{}, &UnavailableError{Component: ComponentProvider, RetryAfter: time.Second, Err: err}
	}
	if tok.RefreshToken == "" {
		return Activation{}, invalid("scopes", "the provider issued no refresh token, so there is nothing to rotate; request the refresh_token/offline_access scope (offline for some servers)")
	}
	return b.installFamily(ctx, e, tok.RefreshToken, tok, true)
}

// consumeFlow marks a flow used with check-and-set, so one code completes it
// once, then destroys it.
func (b *Broker) consumeFlow(ctx context.Context, id, state string) (flowRecord, error) {
	unknown := invalid("state", "unknown, expired or already used; start the flow again")
	rec, err := b.store.Get(ctx, flowKey(state))
	if errors.Is(err, store.ErrNotFound) {
		return flowRecord{}, unknown
	}
	if err != nil {
		return flowRecord{}, storeUnavailable(err)
	}
	var flow flowRecord
	if err := decodeRecord(rec.Value, &flow, &flow.Format); err != nil {
		return flowRecord{}, err
	}
	if flow.Consumed || flow.CredentialID != id || b.opts.now().After(flow.ExpiresAt) {
		return flowRecord{}, unknown
	}
	used := flow
	used.Consumed = true
	raw, err := encodeRecord(used)
	if err != nil {
		return flowRecord{}, err
	}
	if _, err := b.store.Put(ctx, flowKey(state), raw, rec.Version); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return flowRecord{}, unknown
		}
		return flowRecord{}, storeUnavailable(err)
	}
	if err := b.store.Delete(ctx, flowKey(state)); err != nil {
		b.log.WarnContext(ctx, "could not delete a used flow", "credential", id, "err", err)
	}
	return flow, nil
}

// ImportRefreshToken installs a refresh token obtained elsewhere, then
// refreshes at once to prove it works. Errors: *InvalidArgumentError,
// ErrNotFound, ErrReauthRequired (the provider refused it),
// *UnavailableError (installed; the first refresh will be retried).
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
	act, err := b.installFamily(ctx, e, refreshToken, nil, false)
	if err != nil {
		return Activation{}, err
	}
	// Stored first; now prove it. A refused token revokes the family just
	// installed and says so.
	stale := act.Generation
	v, err := b.refresh(ctx, e, func(v *view) bool { return v.fam.FamilyID == act.FamilyID && v.fam.Generation == stale })
	if err != nil {
		return Activation{}, err
	}
	act.Generation = v.fam.Generation
	return act, nil
}

// installFamily stores a new family for the credential, replacing the old
// one, and announces it. With revokeOld the old family is revoked at the
// provider (best effort), leaving no second live family behind.
func (b *Broker) installFamily(ctx context.Context, e *entry, refreshToken string, tok *provider.Token, revokeOld bool) (Activation, error) {
	now := b.opts.now()
	fam := &familyRecord{
		Format:       recordFormat,
		Status:       StatusActive,
		FamilyID:     randomHex(12),
		RefreshToken: refreshToken,
		StartedAt:    now,
	}
	var old *view
	for {
		v, err := b.readView(ctx, e.id)
		if err != nil {
			return Activation{}, err
		}
		if tok != nil {
			fam.Generation = 1
			fam.LastRefreshAt = now
			fam.Access = b.newAccessToken(v.cred.Spec, nil, tok, now)
		}
		version, err := b.writeFamily(ctx, familyKey(v.cred), fam, v.famVersion)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return Activation{}, storeUnavailable(err)
		}
		old = v
		e.setView(b.newView(v.cred, v.credVersion, fam, version))
		break
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
	b.audit(ctx, audit.Event{Action: audit.ActionReauthenticated, Credential: e.id, Family: fam.FamilyID, Generation: fam.Generation})
	b.log.InfoContext(ctx, "new token family installed", "credential", e.id, "family", fam.FamilyID)
	b.notify(ctx, Notice{CredentialID: e.id, FamilyID: fam.FamilyID, Generation: fam.Generation, Kind: NoticeFamilyActivated, DetectedAt: now})
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
