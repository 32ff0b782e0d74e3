package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/providersim"
)

// scrape returns the value of one sample of the server's /metrics, or -1
// when it is absent.
func scrape(t *testing.T, base, sample string) float64 {
	t.Helper()
	body := get(t, base+"/metrics", http.StatusOK)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatalf("%s: %v", sample, err)
	}
	return v
}

func get(t *testing.T, u string, wantStatus int) string {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		t.Fatalf("GET %s: %d %s, want %d", u, resp.StatusCode, body, wantStatus)
	}
	return string(body)
}

// What `serve` exposes at /metrics follows what the server does: cache hits,
// refreshes and their failures by reason, revocations, watchers, and the
// latency of provider and store calls; /healthz and /readyz answer.
func TestMetricsFollowWhatTheServerDoes(t *testing.T) {
	sim, err := providersim.Start(providersim.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	sim.AddClient(providersim.Client{ID: simClientID, Secret: simClientSecret})
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + httpLis.Addr().String()
	dir := t.TempDir()
	keyFile, _ := newKeyFile(t, dir, "store.key")
	c := newCLI(t, nil)
	addr := startNodeWith(t, dir, keyFile, c.trans, func(cfg *serverConfig) { cfg.HTTPListener = httpLis }).addr
	c.env = map[string]string{"ROTAVAULT_ADDR": addr}
	t.Cleanup(func() { c.trans.assertNoSecrets(t, append(sim.Secrets(), simClientSecret)...) })

	get(t, base+"/healthz", http.StatusOK)
	get(t, base+"/readyz", http.StatusOK)

	c.run(simClientSecret+"\n", "credentials", "put", "acme", "--provider", "salesforce", "--base-url", sim.URL(),
		"--client-id", simClientID, "--client-secret-file", "-", "--scope", "api refresh_token").expect(t, exitOK)
	rt, err := sim.IssueRefreshToken(simClientID, []string{"api", "refresh_token"})
	if err != nil {
		t.Fatal(err)
	}
	c.run(rt+"\n", "reauth", "import", "acme", "--refresh-token-file", "-").expect(t, exitOK) // refreshes once to prove it

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	vault := rotavaultv1.NewTokenVaultServiceClient(conn)
	ctx := context.Background()
	var tok *rotavaultv1.GetAccessTokenResponse
	for range 3 {
		if tok, err = vault.GetAccessToken(ctx, &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"}); err != nil {
			t.Fatal(err)
		}
	}
	watchCtx, endWatch := context.WithCancel(ctx)
	defer endWatch()
	stream, err := vault.WatchRevocations(watchCtx, &rotavaultv1.WatchRevocationsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}

	for sample, want := range map[string]float64{
		"rotavault_access_token_cache_hits_total": 3,
		"rotavault_refreshes_total":               1,
		"rotavault_watch_subscribers":             1,
		// Alone on its embedded store: every duty is this replica's.
		"rotavault_duty_shards_owned": 64,
		`rotavault_provider_request_duration_seconds_count{operation="refresh",outcome="ok"}`: 1,
	} {
		if got := scrape(t, base, sample); got != want {
			t.Errorf("%s = %v, want %v", sample, got, want)
		}
	}
	if got := scrape(t, base, `rotavault_store_request_duration_seconds_count{operation="put",result="ok"}`); got < 1 {
		t.Errorf("store puts recorded: %v", got)
	}
	if got := scrape(t, base, "rotavault_notice_log_last_read_timestamp_seconds"); got <= 0 {
		t.Errorf("notice log never read: %v", got)
	}

	// The provider is down when a consumer reports the token rejected: one
	// refresh fails for that reason, after retries the provider never
	// processed.
	if _, err := http.PostForm(sim.URL()+"/services/oauth2/revoke", url.Values{"token": {tok.GetAccessToken()}}); err != nil {
		t.Fatal(err)
	}
	sim.InjectFailure(providersim.FailUnavailable, 100)
	_, err = vault.GetAccessToken(ctx, &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme",
		RejectedToken: &rotavaultv1.RejectedToken{Token: &rotavaultv1.RejectedToken_Generation{Generation: tok.GetGeneration()}}})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("with the provider down: %v, want UNAVAILABLE", err)
	}
	sim.InjectFailure(providersim.FailUnavailable, 0)
	if got := scrape(t, base, `rotavault_refresh_failures_total{reason="provider_unavailable"}`); got != 1 {
		t.Errorf("provider_unavailable failures = %v, want 1", got)
	}
	if got := scrape(t, base, `rotavault_provider_request_duration_seconds_count{operation="refresh",outcome="not_processed"}`); got < 2 {
		t.Errorf("refreshes the provider did not process = %v, want the retries", got)
	}
	if got := scrape(t, base, "rotavault_access_token_cache_misses_total"); got != 1 {
		t.Errorf("cache misses = %v, want 1", got)
	}

	// The credentials gauge has every status from the start, so that an
	// alert on revoked > 0 fires on the first revocation.
	if got := scrape(t, base, `rotavault_credentials{status="revoked"}`); got != 0 {
		t.Errorf("revoked credentials before any revocation = %v, want 0", got)
	}
	c.run("", "credentials", "revoke", "acme", "--reason", "metrics test", "--yes").expect(t, exitOK)
	for sample, want := range map[string]float64{`rotavault_credentials{status="revoked"}`: 1, `rotavault_credentials{status="active"}`: 0} {
		if got := scrape(t, base, sample); got != want {
			t.Errorf("%s after the revocation = %v, want %v", sample, got, want)
		}
	}
	if got := scrape(t, base, `rotavault_revocations_total{reason="admin_revoked"}`); got != 1 {
		t.Errorf("admin revocations = %v, want 1", got)
	}
	// Consumers refused for want of reauthentication are counted though
	// no refresh runs for them (the refresh failure counters stay put).
	reauthRefused := `rotavault_access_tokens_refused_total{code="FailedPrecondition",reason="REAUTHENTICATION_REQUIRED"}`
	if got := scrape(t, base, reauthRefused); got != 0 {
		t.Errorf("refusals for want of reauthentication before any = %v, want 0 (present from the start)", got)
	}
	for range 2 {
		if _, err := vault.GetAccessToken(ctx, &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"}); status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("GetAccessToken on a revoked family: %v, want FAILED_PRECONDITION", err)
		}
	}
	if got := scrape(t, base, reauthRefused); got != 2 {
		t.Errorf("refusals for want of reauthentication = %v, want 2", got)
	}
	if got := scrape(t, base, `rotavault_access_tokens_refused_total{code="Unavailable",reason="PROVIDER_UNAVAILABLE"}`); got != 1 {
		t.Errorf("refusals while the provider was down = %v, want 1", got)
	}
	if got := scrape(t, base, `rotavault_refresh_failures_total{reason="reauthentication_required"}`); got != 0 {
		t.Errorf("refresh failures for want of reauthentication = %v, want 0: no refresh ran", got)
	}
	get(t, base+"/readyz", http.StatusOK) // a provider outage never makes a replica unready
}
