package integration

import (
	"net/http"
	"net/url"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/rotavault/rotavault/broker/option"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/fositeserver"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/server"
)

// detectInterval is the periodic check's interval in these tests: short, on
// the real clock, so a detection takes a fraction of a second.
const detectInterval = 200 * time.Millisecond

// Early detection end to end: a family revoked at the provider (a thief or
// a legacy client replayed an old refresh token) is found by introspecting
// the refresh token — periodically, or when a consumer reports its access
// token rejected — without presenting it at the token endpoint. Watchers
// get FAMILY_REVOKED (REVOKED_AT_PROVIDER); callers get
// REAUTHENTICATION_REQUIRED.
func TestEarlyDetection(t *testing.T) {
	t.Run("periodic introspection, Salesforce simulator", func(t *testing.T) {
		e := newEnv(t, envOptions{brokerOpts: []option.Option{option.WithIntrospectionInterval(detectInterval)}})
		old := e.installSalesforce("acme")
		stream, _ := e.watch(ctxT(t), "", "acme")
		first := e.token("acme")

		revokedAt := time.Now()
		replaySalesforce(t, e, old)
		refreshes := e.sim.Stats().RefreshRequests
		n := nextNotice(t, stream)
		received := time.Now()
		wantRevokedAtProvider(t, e, n, first)
		logDelay(t, revokedAt, n, received)
		if got := e.sim.Stats().RefreshRequests - refreshes; got != 0 {
			t.Errorf("Rotavault presented the refresh token %d times; detection must spend none", got)
		}
		if e.sim.Stats().Introspections == 0 {
			t.Error("the simulator saw no introspection")
		}
	})

	t.Run("rejected-token report, Salesforce simulator", func(t *testing.T) {
		e := newEnv(t, envOptions{}) // periodic checks off: only the report can tell
		old := e.installSalesforce("acme")
		stream, _ := e.watch(ctxT(t), "", "acme")
		first := e.token("acme")
		replaySalesforce(t, e, old)
		refreshes := e.sim.Stats().RefreshRequests

		_, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme",
			RejectedToken: &rotavaultv1.RejectedToken{Token: &rotavaultv1.RejectedToken_Generation{Generation: first.GetGeneration()}}})
		wantCode(t, err, codes.FailedPrecondition, server.ReasonReauthenticationRequired)
		wantRevokedAtProvider(t, e, nextNotice(t, stream), first)
		if got := e.sim.Stats().RefreshRequests - refreshes; got != 0 {
			t.Errorf("the report made Rotavault present the refresh token %d times; want 0", got)
		}
	})

	t.Run("periodic introspection, ory/fosite", func(t *testing.T) {
		e := newEnv(t, envOptions{brokerOpts: []option.Option{option.WithIntrospectionInterval(detectInterval)}})
		fs, old := withFositeIntrospection(t, e, "hydra", fositeserver.Config{AccessTokenLifespan: accessLifetime})
		stream, _ := e.watch(ctxT(t), "", "hydra")
		first := e.token("hydra")

		revokedAt := time.Now()
		resp, err := http.PostForm(fs.TokenURL(), url.Values{
			"grant_type": {"refresh_token"}, "refresh_token": {old}, "client_id": {fositeClientID}, "client_secret": {fositeClientSecret},
		})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("fosite answered the replay with %d, want 400", resp.StatusCode)
		}
		refreshes := fs.Stats().RefreshRequests
		n := nextNotice(t, stream)
		received := time.Now()
		wantRevokedAtProvider(t, e, n, first)
		logDelay(t, revokedAt, n, received)
		if got := fs.Stats().RefreshRequests - refreshes; got != 0 {
			t.Errorf("Rotavault presented the refresh token %d times at fosite; want 0", got)
		}
		if fs.Introspections() == 0 {
			t.Error("fosite saw no introspection")
		}
	})

	t.Run("periodic introspection leaves a live fosite family alone", func(t *testing.T) {
		e := newEnv(t, envOptions{brokerOpts: []option.Option{option.WithIntrospectionInterval(detectInterval)}})
		fs, _ := withFositeIntrospection(t, e, "hydra", fositeserver.Config{AccessTokenLifespan: accessLifetime})
		first := e.token("hydra")
		refreshes := fs.Stats().RefreshRequests
		// Several intervals' worth of checks, each answered "active".
		awaitCondition(t, "three introspections at fosite", func() bool { return fs.Introspections() >= 3 })
		tok := e.token("hydra")
		if tok.GetFamilyId() != first.GetFamilyId() || tok.GetGeneration() != first.GetGeneration() {
			t.Fatalf("after checks: family %s gen %d, want %s gen %d", tok.GetFamilyId(), tok.GetGeneration(), first.GetFamilyId(), first.GetGeneration())
		}
		if s := fs.Stats(); s.RefreshRequests != refreshes || s.InvalidGrants != 0 {
			t.Fatalf("fosite saw %+v after the checks", s)
		}
	})
}

// BenchmarkDetectionDelay measures how long a family revoked at the
// provider stays unnoticed with periodic introspection: from the replay of
// an old refresh token to the FAMILY_REVOKED notice at a watcher. It
// reports the delay as a fraction of the interval (the design bound is
// 1.1 × interval plus one tick of interval/60 plus round trips), and the
// share of it spent delivering the notice after detection.
func BenchmarkDetectionDelay(b *testing.B) {
	e := newEnv(b, envOptions{brokerOpts: []option.Option{option.WithIntrospectionInterval(detectInterval)}})
	e.installSalesforce("acme")
	stream, _ := e.watch(ctxT(b), "", "acme")
	var total, delivery time.Duration
	for b.Loop() {
		// A fresh family each round: import, then replay the imported
		// (now superseded) token as a thief would.
		old, err := e.sim.IssueRefreshToken(simClientID, []string{"api", "refresh_token"})
		if err != nil {
			b.Fatal(err)
		}
		e.importToken("acme", old)
		if n := nextNotice(b, stream); n.GetKind() != rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_ACTIVATED {
			b.Fatalf("notice %+v, want the activation", n)
		}
		revokedAt := time.Now()
		replaySalesforce(b, e, old)
		n := nextNotice(b, stream)
		received := time.Now()
		if n.GetReason() != rotavaultv1.RevocationReason_REVOCATION_REASON_REVOKED_AT_PROVIDER {
			b.Fatalf("notice %+v, want REVOKED_AT_PROVIDER", n)
		}
		total += received.Sub(revokedAt)
		delivery += received.Sub(n.GetDetectTime().AsTime())
	}
	b.ReportMetric(float64(total)/float64(b.N)/float64(detectInterval), "delay/interval")
	b.ReportMetric(float64(delivery)/float64(total), "delivery/delay")
}

// replaySalesforce presents a superseded refresh token at the simulator, as
// a thief or a legacy client would: the simulator revokes the family.
func replaySalesforce(t testing.TB, e *env, oldToken string) {
	t.Helper()
	reuses := e.sim.Stats().ReuseDetections
	resp, err := http.PostForm(e.sim.URL()+"/services/oauth2/token", url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {oldToken}, "client_id": {simClientID}, "client_secret": {simClientSecret},
	})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || e.sim.Stats().ReuseDetections != reuses+1 {
		t.Fatalf("replay answered %d; want 400 and a reuse detection", resp.StatusCode)
	}
}

// wantRevokedAtProvider checks what a consumer sees of a detection: the
// notice, REAUTHENTICATION_REQUIRED, the credential's state and the audit
// record.
func wantRevokedAtProvider(t *testing.T, e *env, n *rotavaultv1.Notice, was *rotavaultv1.GetAccessTokenResponse) {
	t.Helper()
	if n.GetKind() != rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_REVOKED ||
		n.GetReason() != rotavaultv1.RevocationReason_REVOCATION_REASON_REVOKED_AT_PROVIDER ||
		n.GetFamilyId() != was.GetFamilyId() || n.GetGeneration() != was.GetGeneration() || n.GetDetail() == "" {
		t.Fatalf("notice = %+v, want FAMILY_REVOKED / REVOKED_AT_PROVIDER of family %s gen %d", n, was.GetFamilyId(), was.GetGeneration())
	}
	_, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: n.GetCredentialId()})
	wantCode(t, err, codes.FailedPrecondition, server.ReasonReauthenticationRequired)
	desc, err := e.admin.GetCredential(ctxT(t), &rotavaultv1.GetCredentialRequest{CredentialId: n.GetCredentialId()})
	if err != nil {
		t.Fatal(err)
	}
	if c := desc.GetCredential(); c.GetStatus() != rotavaultv1.CredentialStatus_CREDENTIAL_STATUS_REVOKED ||
		c.GetRevocationReason() != rotavaultv1.RevocationReason_REVOCATION_REASON_REVOKED_AT_PROVIDER {
		t.Fatalf("credential = %+v", c)
	}
	wantAudit(t, e, "family_revoked", n.GetCredentialId(), was.GetFamilyId())
}

func logDelay(t *testing.T, revokedAt time.Time, n *rotavaultv1.Notice, received time.Time) {
	t.Helper()
	t.Logf("detection delay %s (interval %s): detected after %s, notice delivered %s later",
		received.Sub(revokedAt).Round(time.Millisecond), detectInterval,
		n.GetDetectTime().AsTime().Sub(revokedAt).Round(time.Millisecond),
		received.Sub(n.GetDetectTime().AsTime()).Round(time.Millisecond))
}

// withFositeIntrospection registers fosite as a generic OAuth 2.0
// credential with its introspection endpoint, returning the imported (now
// superseded) refresh token.
func withFositeIntrospection(t *testing.T, e *env, id string, cfg fositeserver.Config) (*fositeserver.Server, string) {
	t.Helper()
	return withFositeCredential(t, e, id, cfg, func(fs *fositeserver.Server, s *rotavaultv1.CredentialSpec) {
		s.IntrospectionUrl = fs.IntrospectionURL()
	})
}

// awaitCondition polls cond until it holds, failing t after a generous
// deadline.
func awaitCondition(t testing.TB, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, awaitDeadline, what, cond)
}

// A report the provider disproves (the token is live) must not block the
// report of a real revocation a few seconds later: only reports that lead
// to a refresh close the 30 s window; a disproved one closes a 1 s window.
func TestFalseAlarmDoesNotBlockTheRealReport(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.installSalesforce("acme")
	tok := e.token("acme")
	refreshes := e.sim.Stats().RefreshRequests
	report := func() (*rotavaultv1.GetAccessTokenResponse, error) {
		return e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme",
			RejectedToken: &rotavaultv1.RejectedToken{Token: &rotavaultv1.RejectedToken_Generation{Generation: tok.GetGeneration()}}})
	}
	// A false alarm: the provider vouches for the token.
	if got, err := report(); err != nil || got.GetAccessToken() != tok.GetAccessToken() {
		t.Fatalf("false alarm: %v", err)
	}
	// Reports are still bounded: at once again is rate-limited.
	_, err := report()
	wantCode(t, err, codes.ResourceExhausted, server.ReasonRejectionRateLimited)

	// A thief's replay revokes the family; the consumer reports seconds
	// later, well within 30 s.
	if !e.sim.RevokeFamilyOf(tok.GetAccessToken()) {
		t.Fatal("simulator did not revoke")
	}
	e.clock.advance(2 * time.Second)
	_, err = report()
	wantCode(t, err, codes.FailedPrecondition, server.ReasonReauthenticationRequired)
	desc, err := e.admin.GetCredential(ctxT(t), &rotavaultv1.GetCredentialRequest{CredentialId: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	if r := desc.GetCredential().GetRevocationReason(); r != rotavaultv1.RevocationReason_REVOCATION_REASON_REVOKED_AT_PROVIDER {
		t.Fatalf("revocation reason %s, want REVOKED_AT_PROVIDER", r)
	}
	if got := e.sim.Stats().RefreshRequests; got != refreshes {
		t.Fatalf("%d refreshes spent", got-refreshes)
	}
}
