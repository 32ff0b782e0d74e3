package family

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/provider"
)

// New is the family a reauthentication installs, familyID, holding
// refreshToken: with a grant's tokens (tok) its first refresh, without
// (an import) unproven, as nothing has shown the provider accepts it yet.
func New(familyID, refreshToken string, spec credspec.Spec, tok *provider.Token, now time.Time) *Record {
	fam := &Record{Status: StatusActive, FamilyID: familyID, RefreshToken: refreshToken, StartedAt: now, Unproven: tok == nil}
	if tok != nil {
		fam.Generation = 1
		fam.LastRefreshAt = now
		fam.Access = NewAccessToken(spec, nil, tok, now)
		if note := LifetimeNote(spec, tok); note != "" {
			fam.LastError, fam.LastErrorAt = note, now
		}
	}
	return fam
}

// RandomID is n random bytes in hex: a family's id, a credential's
// incarnation.
func RandomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ResultOf is what a successful refresh, answered with tok at now, brings
// to a family whose access token was prev: the new tokens, and a flag for
// the credential when the provider's answer was not believed in full.
func ResultOf(spec credspec.Spec, prev *AccessToken, tok *provider.Token, now time.Time) RefreshResult {
	res := RefreshResult{Now: now, RefreshToken: tok.RefreshToken, Access: NewAccessToken(spec, prev, tok, now)}
	if note := LifetimeNote(spec, tok); note != "" {
		res.LastError = note
	}
	if tok.SignatureStatus == provider.SignatureMismatch {
		res.LastError = signatureMismatchDetail
	}
	return res
}

// signatureMismatchDetail flags a credential whose provider's response
// signature did not match.
const signatureMismatchDetail = "the provider's response signature did not match (is the client secret current?)"

// LifetimeNote says, for last_error, that the provider's lifetime of tok
// was not believed; "" when it was.
func LifetimeNote(spec credspec.Spec, tok *provider.Token) string {
	if tok.IgnoredExpiresIn <= 0 {
		return ""
	}
	return fmt.Sprintf("the provider said the access token lives %s, beyond the believable %s: it is refreshed as if it lived the credential's access token lifetime, %s",
		tok.IgnoredExpiresIn, provider.MaxExpiresIn, spec.AccessTokenLifetime())
}

// NewAccessToken is the access token of tok, answered at now; prev, the
// token it replaces, lends what tok leaves out (instance URL, scopes).
func NewAccessToken(spec credspec.Spec, prev *AccessToken, tok *provider.Token, now time.Time) *AccessToken {
	lifetime := tok.ExpiresIn
	if lifetime <= 0 {
		lifetime = spec.AccessTokenLifetime()
	}
	a := &AccessToken{
		Token:       tok.AccessToken,
		Type:        tok.TokenType,
		InstanceURL: tok.InstanceURL,
		Scopes:      append([]string(nil), tok.Scopes...),
		IssuedAt:    now,
		// Expiry counts from our clock when the answer arrived, not the
		// provider's issued_at: skew must not make us hand out dead tokens.
		ExpiresAt:   now.Add(lifetime),
		Fingerprint: access.Fingerprint(tok.AccessToken),
	}
	if !tok.RequestedAt.IsZero() && !tok.RequestedAt.After(now) {
		a.AliveUntil = tok.RequestedAt.Add(lifetime)
	}
	if !tok.IssuedAt.IsZero() && tok.IssuedAt.Before(now) {
		a.IssuedAt = tok.IssuedAt
	}
	if a.Type == "" {
		a.Type = "Bearer"
	}
	if prev != nil {
		if a.InstanceURL == "" {
			a.InstanceURL = prev.InstanceURL
		}
		if len(a.Scopes) == 0 {
			a.Scopes = append([]string(nil), prev.Scopes...)
		}
	}
	return a
}
