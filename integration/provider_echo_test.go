package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/providersim"
)

// A connected app whose id and secret hold every character the encodings
// treat specially.
const (
	echoClientID     = "3MVG9 echo&app"
	echoClientSecret = `cs/echo+secret= &"<é>100%`
)

// A provider that echoes the request it refuses — refresh token and client
// secret, URL-encoded, base64, JSON-escaped — gets none of it into the
// server's logs, a credential's last_error or the audit trail; the audit
// trail carries no provider text at all, only the OAuth code.
func TestProviderEchoingSecretsLeaksNothing(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.sim.AddClient(providersim.Client{ID: echoClientID, Secret: echoClientSecret})
	useEchoApp := func(spec *rotavaultv1.CredentialSpec) {
		spec.ClientId, spec.ClientSecret = echoClientID, echoClientSecret
	}
	var sentTokens []string
	lastErrors := map[string]string{}
	for _, echo := range providersim.Echoes() {
		e.sim.EchoRequests(echo)

		// A refused refresh token: invalid_grant revokes the family and is
		// audited.
		refused := "refused-" + echo.String()
		if _, err := e.admin.CreateCredential(ctxT(t), &rotavaultv1.CreateCredentialRequest{CredentialId: refused, Spec: withSpec(e.salesforceSpec(), useEchoApp)}); err != nil {
			t.Fatal(err)
		}
		rt := `RT/refresh+token é&"<x>%2F=` + echo.String()
		sentTokens = append(sentTokens, rt)
		_, err := e.vault.Reauthenticate(ctxT(t), &rotavaultv1.ReauthenticateRequest{
			CredentialId: refused,
			Flow:         &rotavaultv1.ReauthenticateRequest_RefreshTokenImport{RefreshTokenImport: &rotavaultv1.RefreshTokenImport{RefreshToken: rt}},
		})
		wantCode(t, err, codes.FailedPrecondition, "REAUTHENTICATION_REQUIRED")

		// A provider failing with a 500 that echoes: the refresh is
		// retried later, and last_error says why.
		failing := "failing-" + echo.String()
		if _, err := e.admin.CreateCredential(ctxT(t), &rotavaultv1.CreateCredentialRequest{CredentialId: failing, Spec: withSpec(e.salesforceSpec(), useEchoApp)}); err != nil {
			t.Fatal(err)
		}
		live, err := e.sim.IssueRefreshToken(echoClientID, []string{"api", "refresh_token"})
		if err != nil {
			t.Fatal(err)
		}
		e.importToken(failing, live)
		e.sim.InjectFailure(providersim.FailServerError, 2)
		e.expire()
		_, err = e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: failing})
		wantCode(t, err, codes.Unavailable, "")

		for _, id := range []string{refused, failing} {
			desc, err := e.admin.GetCredential(ctxT(t), &rotavaultv1.GetCredentialRequest{CredentialId: id})
			if err != nil {
				t.Fatal(err)
			}
			lastErrors["last_error of "+id] = desc.GetCredential().GetLastError()
		}
		if le := lastErrors["last_error of "+failing]; !strings.Contains(le, "you sent") || !strings.Contains(le, "[REDACTED]") {
			t.Errorf("last_error of %s is %q: want the provider's echo, redacted", failing, le)
		}
	}
	e.sim.EchoRequests(providersim.EchoNone)
	e.stop() // every log line and audit record written

	texts := auditText(t, e.dataDir)
	trail, err := os.ReadFile(filepath.Join(e.dataDir, "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(trail), "you sent") {
		t.Error("provider text reached the audit trail")
	}
	if n := strings.Count(string(trail), `provider: refresh: invalid_grant (HTTP 400)`); n != len(providersim.Echoes()) {
		t.Errorf("the audit trail names invalid_grant %d times, want once per refused credential (%d)", n, len(providersim.Echoes()))
	}
	texts["server logs"] = e.logs.String()
	if !strings.Contains(texts["server logs"], "you sent") {
		t.Error("the provider's echo never reached the logs: the search below proves nothing")
	}
	for k, v := range lastErrors {
		texts[k] = v
	}
	spellings := providersim.EchoSpellings(echoClientID, echoClientSecret, append(sentTokens, e.sim.Secrets()...)...)
	for name, text := range texts {
		for _, s := range spellings {
			if strings.Contains(text, s) {
				t.Errorf("leak: %s holds a secret spelled %q", name, s)
			}
		}
	}
}

// withSpec returns spec changed by mutate.
func withSpec(spec *rotavaultv1.CredentialSpec, mutate func(*rotavaultv1.CredentialSpec)) *rotavaultv1.CredentialSpec {
	mutate(spec)
	return spec
}
