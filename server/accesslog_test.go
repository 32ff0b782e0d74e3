package server

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// accessLines are the access log's lines in a JSON log: those that name a
// gRPC method, as "service/method" with their level and code.
func accessLines(t *testing.T, logs *lockedBuffer) []string {
	t.Helper()
	var lines []string
	for _, raw := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		if raw == "" {
			continue
		}
		var line map[string]any
		if err := json.Unmarshal([]byte(raw), &line); err != nil {
			t.Fatalf("log line %q: %v", raw, err)
		}
		if method, ok := line["grpc.method"].(string); ok {
			lines = append(lines, method+" "+line["level"].(string)+" "+line["grpc.code"].(string))
		}
	}
	return lines
}

// accessLogEnv is the catalog server logging JSON at INFO into a buffer,
// with routine reads counted as slow from slow on (zero: the default).
func accessLogEnv(t *testing.T, slow time.Duration) (*catalogEnv, *lockedBuffer) {
	t.Helper()
	logs := &lockedBuffer{}
	e := newCatalogEnvWith(t, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(logs, nil))
		c.LogSlowCall = slow
	})
	return e, logs
}

// createAndImport creates id through the admin RPC (a change of state, so an
// access-log line) and gives it a refresh token through the broker (no RPC,
// no line); it returns the secrets that must not reach the log.
func (e *catalogEnv) createAndImport(id string) []string {
	e.t.Helper()
	if _, err := e.admin.CreateCredential(testCtx(e.t), &rotavaultv1.CreateCredentialRequest{CredentialId: id, Spec: &rotavaultv1.CredentialSpec{
		ProviderKind: rotavaultv1.ProviderKind_PROVIDER_KIND_SALESFORCE,
		BaseUrl:      e.sim.URL(), ClientId: simClient, ClientSecret: simSecret,
		Scopes: []string{"api", "refresh_token"}, AccessTokenLifetime: durationpb.New(time.Hour),
	}}); err != nil {
		e.t.Fatal(err)
	}
	return []string{simSecret, e.importToken(id)}
}

// At the default level a cached GetAccessToken writes no access-log line:
// a hundred of them leave the log as it was. A state change (CreateCredential)
// and a failed call each write one INFO line, and no line holds a secret.
func TestAccessLogQuietForRoutineReads(t *testing.T) {
	e, logs := accessLogEnv(t, 0)
	secrets := e.createAndImport("cred-a")
	if got := accessLines(t, logs); len(got) != 1 || got[0] != "CreateCredential INFO OK" {
		t.Fatalf("after CreateCredential, access log = %q, want one INFO line", got)
	}

	tokens := rotavaultv1.NewTokenVaultServiceClient(e.dial())
	for range 100 {
		resp, err := tokens.GetAccessToken(testCtx(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "cred-a"})
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, resp.GetAccessToken())
	}
	if _, err := e.admin.ListCredentials(testCtx(t), &rotavaultv1.ListCredentialsRequest{}); err != nil {
		t.Fatal(err)
	}
	if got := accessLines(t, logs); len(got) != 1 {
		t.Fatalf("100 cached GetAccessToken and a list added access-log lines: %q", got)
	}

	_, err := tokens.GetAccessToken(testCtx(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "no-such"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("GetAccessToken(no-such) = %v, want NotFound", err)
	}
	if got := accessLines(t, logs); len(got) != 2 || got[1] != "GetAccessToken INFO NotFound" {
		t.Fatalf("after a failed call, access log = %q, want it as a second INFO line", got)
	}
	assertNoSecretsLogged(t, logs.String(), secrets)
}

// Routine reads that fail are logged one line per method and code a
// second, carrying how many were left out: consumers of a revoked
// credential, or a caller asking for ids that do not exist, fail as fast as
// they call (against `serve`, 20,000 calls on a revoked credential wrote
// 10.9 MB of WARN lines, and 20,000 on unknown ids 9.1 MB).
func TestAccessLogSamplesFailingRoutineReads(t *testing.T) {
	e, logs := accessLogEnv(t, 0)
	tokens := rotavaultv1.NewTokenVaultServiceClient(e.dial())
	start := time.Now()
	for i := range 200 {
		_, err := tokens.GetAccessToken(testCtx(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: fmt.Sprintf("no-such-%d", i)})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("GetAccessToken(no-such) = %v, want NotFound", err)
		}
	}
	seconds := int(time.Since(start)/time.Second) + 1
	if got := accessLines(t, logs); len(got) == 0 || len(got) > seconds {
		t.Fatalf("200 failed GetAccessToken in under %d s wrote %d access-log lines, want 1 to %d: %q", seconds, len(got), seconds, got)
	}
	// A different code of the same method is a line of its own.
	_, err := tokens.GetAccessToken(testCtx(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "Not An Id"})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("GetAccessToken(Not An Id) = %v, want InvalidArgument", err)
	}
	if got := accessLines(t, logs); got[len(got)-1] != "GetAccessToken INFO InvalidArgument" {
		t.Fatalf("access log = %q, want the InvalidArgument line last", got)
	}
}

// A routine read slower than --log-slow-call is logged at INFO: with the
// threshold at 1ns, every GetAccessToken is slow and writes its line.
func TestAccessLogSlowRoutineRead(t *testing.T) {
	e, logs := accessLogEnv(t, time.Nanosecond)
	secrets := e.createAndImport("cred-a")
	tokens := rotavaultv1.NewTokenVaultServiceClient(e.dial())
	resp, err := tokens.GetAccessToken(testCtx(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "cred-a"})
	if err != nil {
		t.Fatal(err)
	}
	got := accessLines(t, logs)
	if len(got) != 2 || got[1] != "GetAccessToken INFO OK" {
		t.Fatalf("access log = %q, want CreateCredential then the slow GetAccessToken at INFO", got)
	}
	assertNoSecretsLogged(t, logs.String(), append(secrets, resp.GetAccessToken()))
}

// assertNoSecretsLogged fails if logs hold any secret, plain, in base64
// or in hex.
func assertNoSecretsLogged(t *testing.T, logs string, secrets []string) {
	t.Helper()
	for _, s := range secrets {
		if s == "" {
			continue
		}
		for _, form := range []string{s, base64.StdEncoding.EncodeToString([]byte(s)), base64.RawURLEncoding.EncodeToString([]byte(s)), hex.EncodeToString([]byte(s))} {
			if strings.Contains(logs, form) {
				t.Errorf("a secret (%d bytes) is in the log", len(s))
			}
		}
	}
}
