package detect

import (
	"context"
	"log/slog"
	"time"

	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/provider"
)

// Introspector asks a provider's introspection endpoint about an access or
// a refresh token (RFC 7662). The broker's Provider implements it.
type Introspector interface {
	IntrospectToken(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, token string, hint provider.TokenTypeHint) (provider.Introspection, error)
}

// Family is what early detection asks a provider about: a credential's
// token family as the rotation core last saw it.
type Family struct {
	Credential string
	Generation uint64
	Spec       *credspec.Spec
	// RefreshToken is the family's; Access its access token (empty: none)
	// and AliveUntil when that may first be expired at the provider
	// (AliveAtProviderUntil).
	RefreshToken, Access string
	AliveUntil           time.Time
}

// Checkable reports whether f is worth a periodic check at now: it has a
// refresh token, its provider an introspection endpoint, and an inactive
// answer could conclude something (Corroborable).
func (f Family) Checkable(now time.Time) bool {
	return f.RefreshToken != "" && f.Spec.Endpoint().IntrospectionURL != "" && f.corroborable(now)
}

// corroborable is Corroborable for f at now.
func (f Family) corroborable(now time.Time) bool {
	return Corroborable(f.Spec.ProviderKind == credspec.ProviderOAuth2, f.Access, f.AliveUntil, now)
}

// Describe says what the periodic check (every interval; off when 0 or
// less) makes of f, active or not, at now (the package's Describe).
func (f Family) Describe(interval time.Duration, active bool, now time.Time) (State, string) {
	return Describe(interval, f.Spec.Endpoint().IntrospectionURL != "", active, f.corroborable(now))
}

// Asker asks providers about families' tokens, each question bounded by
// IntrospectTimeout. It only asks and says what an answer proves: the
// rotation core re-reads and revokes. A value; safe for concurrent use.
type Asker struct {
	Provider Introspector
	Now      func() time.Time
	Log      *slog.Logger
}

// Active asks whether token, one of f's (hint says which), is active.
// Any failure, including an answer without "active", is an error: never
// a verdict.
func (a Asker) Active(ctx context.Context, f Family, token string, hint provider.TokenTypeHint) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, IntrospectTimeout)
	defer cancel()
	in, err := a.Provider.IntrospectToken(ctx, f.Spec.Endpoint(), f.Spec.ClientCredentials(), token, hint)
	if err != nil {
		return false, err
	}
	return in.Active, nil
}

// Check is the periodic check of f: it introspects f's refresh token and,
// when the provider says it is inactive, calls confirm, the core's
// confirmation and revocation of exactly the family f was taken from.
func (a Asker) Check(ctx context.Context, f Family, confirm func(context.Context) (revoked bool, err error)) {
	active, err := a.Active(ctx, f, f.RefreshToken, provider.HintRefreshToken)
	if err != nil {
		a.Log.DebugContext(ctx, "periodic introspection failed; nothing concluded", "credential", f.Credential, "err", err)
		return
	}
	if active {
		return
	}
	if _, err := confirm(ctx); err != nil {
		a.Log.WarnContext(ctx, "could not record a family revoked at the provider; the next check or refresh will", "credential", f.Credential, "err", err)
	}
}

// Corroborated reports whether an inactive answer about f's refresh
// token may be taken for a revoked family (see the package doc): always
// at Salesforce; at a generic OAuth 2.0 provider only when f's access
// token, not about to expire, is inactive too.
func (a Asker) Corroborated(ctx context.Context, f Family) bool {
	if f.Spec.ProviderKind != credspec.ProviderOAuth2 {
		return true
	}
	if !f.corroborable(a.Now()) {
		return false
	}
	active, err := a.Active(ctx, f, f.Access, provider.HintAccessToken)
	// Answered before the token could have expired at the provider: its
	// inactivity was a revocation, not the end of its life.
	return err == nil && !active && a.Now().Before(f.AliveUntil)
}

// AsksPreviousAccess reports whether a rotation that replaced f's access
// token (expiring at expiresAt) is worth a PreviousAccess question at
// now: at a generic provider with an introspection endpoint, when neither
// the credential's spec nor f's family (known) says what the provider
// does with previous access tokens, and while the token is not about to
// expire anyway (then its death tells nothing).
func (f Family) AsksPreviousAccess(known credspec.PreviousAccess, expiresAt, now time.Time) bool {
	s := f.Spec
	return s.PreviousAccessToken == credspec.PreviousAccessDefault && s.ProviderKind != credspec.ProviderSalesforce && s.IntrospectionURL != "" &&
		known == credspec.PreviousAccessDefault && now.Add(IntrospectTimeout).Before(expiresAt)
}

// PreviousAccess asks, right after a rotation replaced f's access token,
// whether that token is still active: what the provider does with
// previous access tokens.
func (a Asker) PreviousAccess(ctx context.Context, f Family) (credspec.PreviousAccess, error) {
	active, err := a.Active(ctx, f, f.Access, provider.HintAccessToken)
	switch {
	case err != nil:
		return credspec.PreviousAccessDefault, err
	case active:
		return credspec.PreviousAccessKept, nil
	}
	return credspec.PreviousAccessRevoked, nil
}

// Rejection is what asking the provider about a consumer's rejected
// access token concluded.
type Rejection int

const (
	// RejectionRefresh: the token is dead, or the provider could not say;
	// a refresh finds out (a family really revoked meets invalid_grant).
	RejectionRefresh Rejection = iota
	// RejectionActive: the provider still accepts the token, the
	// resource server's problem, not worth a rotation.
	RejectionActive
	// RejectionRevoked: the refresh token is inactive too, at a provider
	// whose word on refresh tokens counts: the core confirms and revokes.
	RejectionRevoked
)

// Rejected asks the provider about f's access token, which a consumer
// reported rejected, and, when it is dead, about the refresh token before
// a rotation is spent on it: if the provider revoked the whole family, a
// refresh would only meet invalid_grant.
func (a Asker) Rejected(ctx context.Context, f Family) Rejection {
	if f.Spec.Endpoint().IntrospectionURL == "" {
		return RejectionRefresh
	}
	active, err := a.Active(ctx, f, f.Access, provider.HintAccessToken)
	switch {
	case err == nil && active:
		a.Log.InfoContext(ctx, "rejected token is active at the provider; not refreshing", "credential", f.Credential, "generation", f.Generation)
		return RejectionActive
	case err != nil:
		a.Log.WarnContext(ctx, "introspection failed; refreshing", "credential", f.Credential, "err", err)
		return RejectionRefresh
	}
	active, err = a.Active(ctx, f, f.RefreshToken, provider.HintRefreshToken)
	switch {
	case err != nil:
		a.Log.WarnContext(ctx, "refresh token introspection failed; refreshing", "credential", f.Credential, "err", err)
	case !active && f.Spec.ProviderKind != credspec.ProviderSalesforce:
		// A generic provider's "inactive" may only mean its endpoint does
		// not introspect refresh tokens, and the dead access token is what
		// was reported, not a corroboration (a logout revokes it alone).
		a.Log.InfoContext(ctx, "refresh token reported inactive by a generic provider; refreshing to find out", "credential", f.Credential)
	case !active:
		return RejectionRevoked
	}
	return RejectionRefresh
}
