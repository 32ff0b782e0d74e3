package client

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// Token is an access token handed out by Rotavault. Its String, GoString
// and LogValue methods leave AccessToken out, so printing or logging a
// Token does not leak it; the fingerprint names it instead. encoding/json
// does include it, and so does slog's JSONHandler for a Token nested in
// another value (a struct, a slice): log the Token itself.
type Token struct {
	AccessToken string
	// TokenType is usually "Bearer".
	TokenType string
	// InstanceURL is Salesforce's instance URL, where the org's REST API
	// lives; empty for generic OAuth 2.0 providers.
	InstanceURL string
	IssuedAt    time.Time
	Expiry      time.Time
	// UseUntil is when the token must stop being used, though it has not
	// expired: from then on the server may rotate it at a provider that
	// kills the previous access token. At or before Expiry; the zero time
	// when the server does not say (servers before this field), and then
	// Expiry is the only limit. The Client never hands out a cached token
	// past it.
	UseUntil time.Time
	// FamilyID names the token family (all tokens descending from one
	// authentication); Generation counts the refreshes within it.
	FamilyID   string
	Generation uint64
	// Fingerprint is lowercase hex of the first 8 bytes of
	// SHA-256(AccessToken): it names the token without revealing it.
	Fingerprint string
}

// AuthorizationHeader is the value of the HTTP Authorization header that
// presents the token: "Bearer <token>" unless the provider named another
// type.
func (t Token) AuthorizationHeader() string {
	typ := t.TokenType
	if typ == "" || strings.EqualFold(typ, "bearer") {
		typ = "Bearer"
	}
	return typ + " " + t.AccessToken
}

// UsableUntil is when the token must stop being used: UseUntil, or Expiry
// when the server did not say.
func (t Token) UsableUntil() time.Time {
	if t.UseUntil.IsZero() || t.UseUntil.After(t.Expiry) {
		return t.Expiry
	}
	return t.UseUntil
}

// String describes the token without its value.
func (t Token) String() string {
	return fmt.Sprintf("rotavault token (family %s, generation %d, fingerprint %s, expires %s)",
		t.FamilyID, t.Generation, t.Fingerprint, t.Expiry.UTC().Format(time.RFC3339))
}

// GoString is String: %#v must not print the token either.
func (t Token) GoString() string { return t.String() }

// LogValue implements slog.LogValuer without the token's value.
func (t Token) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("family", t.FamilyID),
		slog.Uint64("generation", t.Generation),
		slog.String("fingerprint", t.Fingerprint),
		slog.Time("expiry", t.Expiry),
	)
}

func tokenFromProto(resp *rotavaultv1.GetAccessTokenResponse) Token {
	return Token{
		AccessToken: resp.GetAccessToken(),
		TokenType:   resp.GetTokenType(),
		InstanceURL: resp.GetInstanceUrl(),
		IssuedAt:    timeOf(resp.GetIssueTime()),
		Expiry:      timeOf(resp.GetExpireTime()),
		UseUntil:    timeOf(resp.GetUseUntil()),
		FamilyID:    resp.GetFamilyId(),
		Generation:  resp.GetGeneration(),
		Fingerprint: resp.GetFingerprint(),
	}
}

// timeOf is ts as a time, or the zero time when ts is unset.
func timeOf(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}
