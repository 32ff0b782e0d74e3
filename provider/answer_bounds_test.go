package provider_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rotavault/rotavault/provider"
)

// What a provider answers goes on to consumers (the access token into an
// Authorization header, the instance URL as where they send it) and to
// people's terminals. An answer that would harm them is a provider error
// that names the field, never a token handed on.
func TestRefreshRefusesHarmfulAnswers(t *testing.T) {
	many := strings.TrimSpace(strings.Repeat("api ", 257))
	tests := []struct {
		name   string
		fields map[string]any
		refuse string // the field the error names; "" = accepted
	}{
		{"Salesforce access token with '!'", map[string]any{"access_token": "00Dxx0000001gPL!AQ4AQFsGvJ0n.x_y-z~"}, ""},
		{"access token of 8 KiB", map[string]any{"access_token": strings.Repeat("a", 8<<10)}, ""},
		{"access token over 8 KiB", map[string]any{"access_token": strings.Repeat("a", 8<<10+1)}, "access_token"},
		{"access token with CR LF", map[string]any{"access_token": "at\r\nX-Injected: 1"}, "access_token"},
		{"access token with an escape sequence", map[string]any{"access_token": "at\x1b[2J"}, "access_token"},
		{"access token with a space", map[string]any{"access_token": "at more"}, "access_token"},
		{"access token with non-ASCII", map[string]any{"access_token": "até"}, "access_token"},
		{"refresh token of 8 KiB", map[string]any{"refresh_token": strings.Repeat("r", 8<<10)}, ""},
		{"refresh token with a space (RFC 6749 VSCHAR)", map[string]any{"refresh_token": "rt more"}, ""},
		{"refresh token over 8 KiB", map[string]any{"refresh_token": strings.Repeat("r", 900_000)}, "refresh_token"},
		{"refresh token with NUL and LF", map[string]any{"refresh_token": "rt\x00\nX"}, "refresh_token"},
		{"refresh token with an escape sequence", map[string]any{"refresh_token": "rt\x1b[31m"}, "refresh_token"},
		{"refresh token with non-ASCII", map[string]any{"refresh_token": "rté"}, "refresh_token"},
		{"token_type of 64 characters", map[string]any{"token_type": strings.Repeat("B", 64)}, ""},
		{"token_type over 64 characters", map[string]any{"token_type": strings.Repeat("B", 65)}, "token_type"},
		{"token_type with CR LF", map[string]any{"token_type": "Bearer\r\nX: y"}, "token_type"},
		{"scope of 256 entries", map[string]any{"scope": strings.TrimSpace(strings.Repeat("api ", 256))}, ""},
		{"scope of 257 entries", map[string]any{"scope": many}, "scopes"},
		{"scope over 8 KiB", map[string]any{"scope": strings.Repeat("s", 8<<10+1)}, "scope"},
		{"scope with an escape sequence", map[string]any{"scope": "api \x1b]0;owned\x07"}, "scope"},
		{"instance_url on my.salesforce.com", map[string]any{"instance_url": "https://acme.my.salesforce.com"}, ""},
		{"instance_url on lightning.force.com", map[string]any{"instance_url": "https://acme.lightning.force.com"}, ""},
		{"instance_url on loopback over http", map[string]any{"instance_url": "http://127.0.0.1:8080"}, ""},
		{"instance_url on another host", map[string]any{"instance_url": "https://attacker.example"}, "instance_url"},
		{"instance_url on a look-alike domain", map[string]any{"instance_url": "https://evilforce.com"}, "instance_url"},
		{"instance_url under a look-alike domain", map[string]any{"instance_url": "https://acme.salesforce.com.attacker.example"}, "instance_url"},
		{"instance_url over http", map[string]any{"instance_url": "http://acme.my.salesforce.com"}, "instance_url"},
		{"instance_url with user info", map[string]any{"instance_url": "https://x@acme.my.salesforce.com"}, "instance_url"},
		{"instance_url with a newline", map[string]any{"instance_url": "https://acme.my.salesforce.com/\n"}, "instance_url"},
		{"instance_url not a URL", map[string]any{"instance_url": "javascript:alert(1)"}, "instance_url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := map[string]any{"access_token": "00Dxx!AQ0", "refresh_token": "5Aep861new"}
			for k, v := range tt.fields {
				body[k] = v
			}
			_, srv := startFake(t, jsonAnswer(http.StatusOK, body))
			tok, err := provider.New(nil).Refresh(context.Background(), provider.SalesforceEndpoint(srv.URL), testCreds, testRefreshToken)
			if tt.refuse == "" {
				if err != nil {
					t.Fatalf("Refresh: %v, want the answer accepted", err)
				}
				return
			}
			if tok != nil {
				t.Errorf("got a token %v, want none", tok)
			}
			pe := asProviderError(t, err)
			// The provider acted (a refresh may have rotated): the outcome
			// is unknown, as for any 2xx answer that cannot be used.
			if pe.Outcome != provider.OutcomeUnknown || !strings.Contains(pe.Description, tt.refuse) {
				t.Errorf("got %v (outcome %v), want an unknown outcome naming %s", err, pe.Outcome, tt.refuse)
			}
			for _, v := range tt.fields {
				if s, ok := v.(string); ok && len(s) > 8 && strings.Contains(err.Error(), s) {
					t.Errorf("error %q repeats the refused value", err)
				}
			}
		})
	}
}

// An instance URL under the domain a credential configures (Government
// Cloud, a China instance) is the provider's.
func TestInstanceURLOnConfiguredDomains(t *testing.T) {
	_, srv := startFake(t, jsonAnswer(http.StatusOK, map[string]any{"access_token": "a1", "instance_url": "https://acme.my.salesforce.mil"}))
	ep := provider.SalesforceEndpoint(srv.URL)
	c := provider.New(nil)
	if _, err := c.Refresh(context.Background(), ep, testCreds, testRefreshToken); err == nil {
		t.Fatal("an instance URL outside the provider's domains was accepted")
	}
	ep.InstanceURLDomain = "salesforce.mil"
	if _, err := c.Refresh(context.Background(), ep, testCreds, testRefreshToken); err != nil {
		t.Fatalf("an instance URL under the configured domain: %v", err)
	}
}

// An expires_in beyond MaxExpiresIn is not believed: the Token carries no
// lifetime, so the caller's default applies, and reports the one ignored.
func TestAbsurdExpiresInIsIgnored(t *testing.T) {
	const hundredYears = 100 * 365 * 24 * time.Hour
	tests := []struct {
		expiresIn     any
		want, ignored time.Duration
	}{
		{3600, time.Hour, 0},
		{int64(provider.MaxExpiresIn / time.Second), provider.MaxExpiresIn, 0},
		{int64(provider.MaxExpiresIn/time.Second) + 1, 0, provider.MaxExpiresIn + time.Second},
		{1e12, 0, hundredYears},
	}
	for _, tt := range tests {
		_, srv := startFake(t, jsonAnswer(http.StatusOK, map[string]any{"access_token": "a1", "expires_in": tt.expiresIn}))
		tok, err := provider.New(nil).Refresh(context.Background(), oauth2Endpoint(srv.URL), testCreds, testRefreshToken)
		if err != nil {
			t.Fatal(err)
		}
		if tok.ExpiresIn != tt.want || tok.IgnoredExpiresIn != tt.ignored {
			t.Errorf("expires_in %v: ExpiresIn %s, IgnoredExpiresIn %s; want %s, %s", tt.expiresIn, tok.ExpiresIn, tok.IgnoredExpiresIn, tt.want, tt.ignored)
		}
	}
}

// A device code is a secret of every poll that follows, stored with the
// flow and searched for in each poll's error text ("authorization_pending"
// is one): a 900 KB one would make every poll of the flow allocate hundreds
// of MB to redact it. Like a refresh token, it must be 1-8192 characters
// of RFC 8628's VSCHAR.
func TestDeviceAuthorizationRefusesAHarmfulDeviceCode(t *testing.T) {
	for name, code := range map[string]string{
		"over 8 KiB":         strings.Repeat("d", 900_000),
		"with NUL and LF":    "dc\x00\nX",
		"with an escape":     "dc\x1b[2J",
		"with non-ASCII":     "dcé",
		"of 8 KiB (allowed)": strings.Repeat("d", 8<<10),
	} {
		t.Run(name, func(t *testing.T) {
			_, srv := startFake(t, jsonAnswer(http.StatusOK, map[string]any{
				"device_code": code, "user_code": "BCDF-GHJK", "verification_uri": "https://as.example/device", "interval": 5, "expires_in": 600,
			}))
			ep := provider.Endpoint{Kind: provider.KindOAuth2, TokenURL: srv.URL + "/token", DeviceAuthorizationURL: srv.URL + "/device"}
			d, err := provider.New(nil).StartDeviceAuthorization(context.Background(), ep, testCreds, nil)
			if strings.HasSuffix(name, "(allowed)") {
				if err != nil || d == nil || d.DeviceCode != code {
					t.Fatalf("StartDeviceAuthorization: %v, want the device code accepted", err)
				}
				return
			}
			if d != nil {
				t.Fatalf("got a device authorization, want none for a device code %s", name)
			}
			if pe := asProviderError(t, err); pe.Outcome != provider.OutcomeUnknown || !strings.Contains(pe.Description, "device_code") {
				t.Errorf("got %v (outcome %v), want an unknown outcome naming device_code", err, pe.Outcome)
			}
		})
	}
}
