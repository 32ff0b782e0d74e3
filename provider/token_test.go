package provider_test

import (
	"context"
	"crypto/fips140"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/rotavault/rotavault/provider"
)

var fixedNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func fixedClock() time.Time { return fixedNow }

func TestRefreshGenericResponse(t *testing.T) {
	tests := []struct {
		name string
		body map[string]any
		want provider.Token
	}{
		{
			name: "full response with numeric expires_in",
			body: map[string]any{"access_token": "a1", "token_type": "bearer", "refresh_token": "r2", "expires_in": 3600, "scope": "openid  offline_access"},
			want: provider.Token{AccessToken: "a1", TokenType: "bearer", RefreshToken: "r2", ExpiresIn: time.Hour, Scopes: []string{"openid", "offline_access"}, IssuedAt: fixedNow},
		},
		{
			name: "expires_in as string",
			body: map[string]any{"access_token": "a1", "expires_in": "300"},
			want: provider.Token{AccessToken: "a1", TokenType: "Bearer", ExpiresIn: 5 * time.Minute, IssuedAt: fixedNow},
		},
		{
			name: "expires_in as float",
			body: map[string]any{"access_token": "a1", "expires_in": 59.9},
			want: provider.Token{AccessToken: "a1", TokenType: "Bearer", ExpiresIn: 59 * time.Second, IssuedAt: fixedNow},
		},
		{
			name: "no rotation: no refresh_token, no expires_in, no scope",
			body: map[string]any{"access_token": "a1"},
			want: provider.Token{AccessToken: "a1", TokenType: "Bearer", IssuedAt: fixedNow},
		},
		{
			// The refresh happened: an odd optional field must not cost the
			// rotated refresh token.
			name: "odd types in optional fields are ignored",
			body: map[string]any{"access_token": "a1", "refresh_token": "r2", "expires_in": map[string]any{}, "scope": 7, "token_type": nil, "issued_at": true},
			want: provider.Token{AccessToken: "a1", TokenType: "Bearer", RefreshToken: "r2", IssuedAt: fixedNow},
		},
		{
			name: "negative expires_in is none",
			body: map[string]any{"access_token": "a1", "expires_in": -5},
			want: provider.Token{AccessToken: "a1", TokenType: "Bearer", IssuedAt: fixedNow},
		},
		{
			name: "scope as JSON array",
			body: map[string]any{"access_token": "a1", "scope": []string{"a", "b"}},
			want: provider.Token{AccessToken: "a1", TokenType: "Bearer", Scopes: []string{"a", "b"}, IssuedAt: fixedNow},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, srv := startFake(t, jsonAnswer(http.StatusOK, tt.body))
			c := provider.New(nil, provider.WithClock(fixedClock))
			tok, err := c.Refresh(context.Background(), oauth2Endpoint(srv.URL), testCreds, testRefreshToken)
			if err != nil {
				t.Fatalf("Refresh: %v", err)
			}
			assertToken(t, tok, tt.want)
			if tok.SignatureStatus != provider.SignatureNotChecked {
				t.Errorf("SignatureStatus = %v, want not checked for a generic provider", tok.SignatureStatus)
			}
		})
	}
}

// A token's known life at the provider counts from when it was asked for:
// the provider issued it after that, so it cannot expire before.
func TestTokenAliveAtProviderUntil(t *testing.T) {
	for _, tt := range []struct {
		name string
		body map[string]any
		want time.Time
	}{
		{"expires_in", map[string]any{"access_token": "a1", "expires_in": 20}, fixedNow.Add(20 * time.Second)},
		{"no expires_in", map[string]any{"access_token": "a1"}, time.Time{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, srv := startFake(t, jsonAnswer(http.StatusOK, tt.body))
			c := provider.New(nil, provider.WithClock(fixedClock))
			tok, err := c.Refresh(context.Background(), oauth2Endpoint(srv.URL), testCreds, testRefreshToken)
			if err != nil {
				t.Fatalf("Refresh: %v", err)
			}
			if !tok.RequestedAt.Equal(fixedNow) || !tok.AliveAtProviderUntil.Equal(tt.want) {
				t.Fatalf("RequestedAt %v, AliveAtProviderUntil %v; want %v, %v", tok.RequestedAt, tok.AliveAtProviderUntil, fixedNow, tt.want)
			}
		})
	}
}

func assertToken(t *testing.T, got *provider.Token, want provider.Token) {
	t.Helper()
	if got.AccessToken != want.AccessToken || got.TokenType != want.TokenType || got.RefreshToken != want.RefreshToken ||
		got.InstanceURL != want.InstanceURL || got.IDURL != want.IDURL || got.ExpiresIn != want.ExpiresIn ||
		!slices.Equal(got.Scopes, want.Scopes) || !got.IssuedAt.Equal(want.IssuedAt) {
		t.Errorf("token mismatch:\n got access=%q type=%q refresh=%q instance=%q id=%q expiresIn=%v scopes=%q issuedAt=%v\nwant access=%q type=%q refresh=%q instance=%q id=%q expiresIn=%v scopes=%q issuedAt=%v",
			got.AccessToken, got.TokenType, got.RefreshToken, got.InstanceURL, got.IDURL, got.ExpiresIn, got.Scopes, got.IssuedAt,
			want.AccessToken, want.TokenType, want.RefreshToken, want.InstanceURL, want.IDURL, want.ExpiresIn, want.Scopes, want.IssuedAt)
	}
}

func TestRefreshSalesforceResponse(t *testing.T) {
	const (
		idURL    = "https://login.salesforce.com/id/00Dxx0000001gPLEAY/005xx000001SwiUAAS"
		issuedAt = "1767225600123" // 2026-01-01T00:00:00.123Z
	)
	good := salesforceSignature(testClientSecret, idURL, issuedAt)
	sfBody := func(sig string) map[string]any {
		body := map[string]any{
			"access_token":  "00Dxx!AQ0",
			"refresh_token": "5Aep861new",
			"signature":     sig,
			"scope":         "refresh_token api",
			"instance_url":  "https://acme.my.salesforce.com",
			"id":            idURL,
			"token_type":    "Bearer",
			"issued_at":     issuedAt,
		}
		if sig == "" {
			delete(body, "signature")
		}
		return body
	}
	want := provider.Token{
		AccessToken: "00Dxx!AQ0", TokenType: "Bearer", RefreshToken: "5Aep861new",
		InstanceURL: "https://acme.my.salesforce.com", IDURL: idURL,
		Scopes: []string{"refresh_token", "api"}, IssuedAt: time.UnixMilli(1767225600123),
	}
	tests := []struct {
		name  string
		kind  provider.Kind
		creds provider.ClientCredentials
		sig   string
		want  provider.SignatureStatus
	}{
		{"valid signature", provider.KindSalesforce, testCreds, good, provider.SignatureValid},
		{"signature by another secret", provider.KindSalesforce, testCreds, salesforceSignature("another-client-secret-0002", idURL, issuedAt), provider.SignatureMismatch},
		{"signature over another issued_at", provider.KindSalesforce, testCreds, salesforceSignature(testClientSecret, idURL, "1767225600124"), provider.SignatureMismatch},
		{"signature not base64", provider.KindSalesforce, testCreds, "%%%", provider.SignatureMismatch},
		{"signature missing", provider.KindSalesforce, testCreds, "", provider.SignatureMismatch},
		{"no client secret to check with", provider.KindSalesforce, provider.ClientCredentials{ClientID: testClientID}, good, provider.SignatureNotChecked},
		{"generic provider is not checked", provider.KindOAuth2, testCreds, "garbage", provider.SignatureNotChecked},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, srv := startFake(t, jsonAnswer(http.StatusOK, sfBody(tt.sig)))
			ep := provider.SalesforceEndpoint(srv.URL)
			ep.Kind = tt.kind
			tok, err := provider.New(nil, provider.WithClock(fixedClock)).Refresh(context.Background(), ep, tt.creds, testRefreshToken)
			if err != nil {
				t.Fatalf("Refresh: %v", err)
			}
			assertToken(t, tok, want)
			if tok.ExpiresIn != 0 {
				t.Errorf("ExpiresIn = %v, want 0: Salesforce sends no expires_in", tok.ExpiresIn)
			}
			if tok.SignatureStatus != tt.want {
				t.Errorf("SignatureStatus = %v, want %v", tok.SignatureStatus, tt.want)
			}
		})
	}
}

func TestVerifySalesforceSignature(t *testing.T) {
	const idURL = "https://login.salesforce.com/id/00D/005"
	issued := time.UnixMilli(1767225600123)
	// Secrets long enough to be approved HMAC keys, so the test also runs
	// under FIPS 140-only (TestFIPS140Only).
	const s3, s4 = "client-secret-0003", "client-secret-0004"
	tests := []struct {
		name   string
		tok    *provider.Token
		secret string
		want   bool
	}{
		{"token built by hand uses IssuedAt in ms", &provider.Token{IDURL: idURL, IssuedAt: issued, Signature: salesforceSignature(s3, idURL, "1767225600123")}, s3, true},
		{"wrong secret", &provider.Token{IDURL: idURL, IssuedAt: issued, Signature: salesforceSignature(s3, idURL, "1767225600123")}, s4, false},
		{"empty secret", &provider.Token{IDURL: idURL, IssuedAt: issued, Signature: salesforceSignature("empty-secret-unused", idURL, "1767225600123")}, "", false},
		{"no id", &provider.Token{IssuedAt: issued, Signature: salesforceSignature(s3, "", "1767225600123")}, s3, false},
		{"no issued_at", &provider.Token{IDURL: idURL, Signature: salesforceSignature(s3, idURL, "")}, s3, false},
		{"nil token", nil, s3, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := provider.VerifySalesforceSignature(tt.tok, tt.secret); got != tt.want {
				t.Errorf("VerifySalesforceSignature = %v, want %v", got, tt.want)
			}
		})
	}
}

// A client secret too short to be an approved HMAC key: checked normally,
// but under FIPS 140-only it cannot be, and the refresh must still succeed
// with the signature reported as not checked (crypto/hmac would panic).
func TestShortSecretSignature(t *testing.T) {
	const short = "s3cret"
	tok := &provider.Token{IDURL: "https://login.salesforce.com/id/00D/005", IssuedAt: time.UnixMilli(1767225600123)}
	body := map[string]any{
		"access_token": "00Dxx!short", "instance_url": "https://acme.my.salesforce.com", "id": tok.IDURL,
		"issued_at": "1767225600123", "token_type": "Bearer",
	}
	if !fips140.Enforced() {
		body["signature"] = salesforceSignature(short, tok.IDURL, "1767225600123")
	} else {
		body["signature"] = "bm90IGNoZWNrZWQ="
	}
	_, srv := startFake(t, jsonAnswer(http.StatusOK, body))
	c := provider.New(nil, provider.WithClock(fixedClock))
	got, err := c.Refresh(context.Background(), provider.SalesforceEndpoint(srv.URL), provider.ClientCredentials{ClientID: testClientID, ClientSecret: short}, testRefreshToken)
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	want := provider.SignatureValid
	if fips140.Enforced() {
		want = provider.SignatureNotChecked
	}
	if got.SignatureStatus != want {
		t.Fatalf("SignatureStatus = %v, want %v (fips140 enforced: %v)", got.SignatureStatus, want, fips140.Enforced())
	}
}

func TestSalesforceEndpoint(t *testing.T) {
	for _, base := range []string{"https://acme.my.salesforce.com", "https://acme.my.salesforce.com/"} {
		ep := provider.SalesforceEndpoint(base)
		want := provider.Endpoint{
			Kind:             provider.KindSalesforce,
			TokenURL:         "https://acme.my.salesforce.com/services/oauth2/token",
			AuthorizeURL:     "https://acme.my.salesforce.com/services/oauth2/authorize",
			RevocationURL:    "https://acme.my.salesforce.com/services/oauth2/revoke",
			IntrospectionURL: "https://acme.my.salesforce.com/services/oauth2/introspect",
		}
		if ep != want {
			t.Errorf("SalesforceEndpoint(%q) = %+v, want %+v", base, ep, want)
		}
	}
}
