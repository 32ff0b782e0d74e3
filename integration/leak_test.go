package integration

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/providersim"
)

// Every scenario of this suite ends with a search of everything its servers
// wrote — log lines, audit records — for every secret the scenario created
// or used: refresh and access tokens, authorization codes and PKCE
// verifiers (all seen by the simulator), client secrets, the store key, the
// Vault token. A hit fails the scenario that leaked it.

// secretsOf lists the secrets a scenario's servers must never write.
func secretsOf(t testing.TB, sim *providersim.Server, storeKeyFile string, v *vaulttest.Server) []string {
	t.Helper()
	secrets := sim.Secrets()
	if storeKeyFile != "" {
		raw, err := os.ReadFile(storeKeyFile)
		if err != nil {
			t.Fatalf("leak check: %v", err)
		}
		secrets = append(secrets, strings.TrimSpace(string(raw)))
		if key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw))); err == nil {
			secrets = append(secrets, string(key), base64.RawURLEncoding.EncodeToString(key))
		}
	}
	if v != nil {
		secrets = append(secrets, v.RootToken, v.Token, v.TransitToken)
	}
	return secrets
}

// checkNoSecrets fails t when any text holds any secret. Names of texts are
// reported, the secrets themselves never.
func checkNoSecrets(t testing.TB, secrets []string, texts map[string]string) {
	t.Helper()
	for name, text := range texts {
		for i, s := range secrets {
			// Short values would match by chance; every real secret here is
			// long (tokens ~100 characters, keys 32 bytes).
			if len(s) < 16 {
				continue
			}
			if strings.Contains(text, s) {
				t.Errorf("leak: %s contains secret #%d of %d (a %d-character value the scenario created)", name, i, len(secrets), len(s))
			}
		}
	}
}

// auditText reads the audit trails under dirs.
func auditText(t testing.TB, dirs ...string) map[string]string {
	t.Helper()
	texts := make(map[string]string)
	for _, dir := range dirs {
		matches, _ := filepath.Glob(filepath.Join(dir, "*.jsonl"))
		for _, m := range matches {
			raw, err := os.ReadFile(m)
			if err != nil {
				t.Fatalf("leak check: %v", err)
			}
			texts[m] = string(raw)
		}
	}
	return texts
}

// The check itself must find a leak, or a green suite proves nothing.
func TestLeakCheckFindsALeakedToken(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.installSalesforce("acme")
	tok := e.token("acme")
	secrets := secretsOf(t, e.sim, filepath.Join(e.dataDir, "store.key"), nil)
	rec := &recordingTB{TB: t}
	checkNoSecrets(rec, secrets, map[string]string{"planted": `{"msg":"oops","token":"` + tok.GetAccessToken() + `"}`})
	if !rec.failed {
		t.Fatal("an access token planted in a log line was not found")
	}
	rec = &recordingTB{TB: t}
	checkNoSecrets(rec, secrets, map[string]string{"clean": e.logs.String()})
	if rec.failed {
		t.Fatal("the real logs of this scenario leak a secret")
	}
}

// recordingTB records failures instead of failing the test.
type recordingTB struct {
	testing.TB
	failed bool
}

func (r *recordingTB) Errorf(string, ...any) { r.failed = true }
func (r *recordingTB) Helper()               {}
