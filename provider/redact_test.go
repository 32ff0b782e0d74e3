package provider_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/rotavault/rotavault/provider"
)

func TestTokenAndCredentialsNeverPrintSecrets(t *testing.T) {
	tok := provider.Token{
		AccessToken: testAccessToken, RefreshToken: testRefreshToken, TokenType: "Bearer",
		InstanceURL: "https://acme.my.salesforce.com", Scopes: []string{"api"}, IssuedAt: fixedNow, ExpiresIn: time.Hour,
	}
	values := map[string]any{
		"Token":              tok,
		"*Token":             &tok,
		"ClientCredentials":  testCreds,
		"*ClientCredentials": &testCreds,
		// slog's JSON handler would json.Marshal a struct holding a Token,
		// which is deliberately not redacted; fmt and text logs are.
		"in a struct, printed": fmt.Sprint(struct{ T provider.Token }{tok}),
	}
	for name, v := range values {
		t.Run(name, func(t *testing.T) {
			var texts []string
			for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
				texts = append(texts, fmt.Sprintf(verb, v))
			}
			var buf bytes.Buffer
			slog.New(slog.NewJSONHandler(&buf, nil)).Info("msg", "v", v)
			slog.New(slog.NewTextHandler(&buf, nil)).Info("msg", "v", v)
			texts = append(texts, buf.String())
			for _, text := range texts {
				for _, secret := range testSecrets {
					if strings.Contains(text, secret) {
						t.Errorf("printed %q contains secret %q", text, secret)
					}
				}
			}
		})
	}
	t.Run("printed form still identifies the token", func(t *testing.T) {
		s := tok.String()
		if !strings.Contains(s, "https://acme.my.salesforce.com") || !strings.Contains(s, "[REDACTED]") {
			t.Errorf("String() = %q, want the instance URL and redaction marks", s)
		}
		if s := testCreds.String(); !strings.Contains(s, testClientID) {
			t.Errorf("ClientCredentials.String() = %q, want the client id", s)
		}
	})
}
