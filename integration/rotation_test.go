package integration

import (
	"context"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/server"
)

// concurrentCallers is the crowd that hits one expired token at once.
const concurrentCallers = 1000

func TestConcurrentCallersShareOneRefresh(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.installSalesforce("acme")
	before := e.token("acme")
	refreshesBefore := e.sim.Stats().RefreshRequests

	e.expire()
	var wg sync.WaitGroup
	tokens := make([]string, concurrentCallers)
	errs := make([]error, concurrentCallers)
	start := make(chan struct{})
	for i := range concurrentCallers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			resp, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
			tokens[i], errs[i] = resp.GetAccessToken(), err
		}()
	}
	close(start)
	wg.Wait()

	for i, err := range errs {
		if err != nil {
			t.Fatalf("caller %d: %v", i, err)
		}
	}
	if got := e.sim.Stats().RefreshRequests - refreshesBefore; got != 1 {
		t.Fatalf("the provider saw %d refreshes for %d callers, want exactly 1", got, concurrentCallers)
	}
	for i, tok := range tokens {
		if tok != tokens[0] {
			t.Fatalf("caller %d got a different token than caller 0", i)
		}
	}
	if tokens[0] == before.GetAccessToken() {
		t.Fatal("callers got the expired token")
	}
	if s := e.sim.Stats(); s.ReuseDetections != 0 || s.FamiliesRevoked != 0 {
		t.Fatalf("provider detected reuse: %+v", s)
	}
}

func TestCachedTokenIsHandedOutWithoutRefresh(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.installSalesforce("acme")
	first := e.token("acme")
	refreshes := e.sim.Stats().RefreshRequests
	for range 50 {
		if got := e.token("acme"); got.GetAccessToken() != first.GetAccessToken() {
			t.Fatal("a valid cached token was replaced")
		}
	}
	if got := e.sim.Stats().RefreshRequests; got != refreshes {
		t.Fatalf("cached calls caused %d refreshes", got-refreshes)
	}
	if first.GetInstanceUrl() != e.sim.URL() || first.GetTokenType() != "Bearer" || first.GetFamilyId() == "" || first.GetGeneration() != 1 {
		t.Fatalf("unexpected token metadata: %+v", first)
	}
}

func TestTheftRevokesFamilyAndReauthenticationRestores(t *testing.T) {
	e := newEnv(t, envOptions{})
	oldToken := e.installSalesforce("acme")
	stream, _ := e.watch(ctxT(t), "", "acme")
	first := e.token("acme")

	// A thief (or a legacy client) presents the superseded refresh token:
	// Salesforce revokes the whole family.
	resp, err := http.PostForm(e.sim.URL()+"/services/oauth2/token", url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {oldToken}, "client_id": {simClientID}, "client_secret": {simClientSecret},
	})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("reuse answered %d, want 400", resp.StatusCode)
	}

	e.expire()
	_, err = e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
	wantCode(t, err, codes.FailedPrecondition, server.ReasonReauthenticationRequired)

	n := nextNotice(t, stream)
	if n.GetKind() != rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_REVOKED ||
		n.GetReason() != rotavaultv1.RevocationReason_REVOCATION_REASON_REFRESH_TOKEN_REJECTED ||
		n.GetFamilyId() != first.GetFamilyId() || n.GetCredentialId() != "acme" || n.GetCursor() == "" {
		t.Fatalf("notice = %+v", n)
	}
	// Callers keep getting REAUTHENTICATION_REQUIRED, without new provider calls.
	refreshes := e.sim.Stats().RefreshRequests
	_, err = e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
	wantCode(t, err, codes.FailedPrecondition, server.ReasonReauthenticationRequired)
	if e.sim.Stats().RefreshRequests != refreshes {
		t.Fatal("a revoked family was presented to the provider again")
	}
	desc, err := e.admin.GetCredential(ctxT(t), &rotavaultv1.GetCredentialRequest{CredentialId: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	if c := desc.GetCredential(); c.GetStatus() != rotavaultv1.CredentialStatus_CREDENTIAL_STATUS_REVOKED ||
		c.GetRevocationReason() != rotavaultv1.RevocationReason_REVOCATION_REASON_REFRESH_TOKEN_REJECTED {
		t.Fatalf("credential = %+v", c)
	}
	wantAudit(t, e, "family_revoked", "acme", first.GetFamilyId())

	t.Run("authorization code with PKCE", func(t *testing.T) {
		act := e.authorize("acme")
		n := nextNotice(t, stream)
		if n.GetKind() != rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_ACTIVATED || n.GetFamilyId() != act.GetFamilyId() {
			t.Fatalf("notice = %+v, want activation of %s", n, act.GetFamilyId())
		}
		tok := e.token("acme")
		if tok.GetFamilyId() == first.GetFamilyId() || tok.GetFamilyId() != act.GetFamilyId() {
			t.Fatalf("token family %s, want new family %s", tok.GetFamilyId(), act.GetFamilyId())
		}
		if !e.sim.AccessTokenActive(tok.GetAccessToken()) {
			t.Fatal("new access token is not accepted by the provider")
		}
	})
	t.Run("import", func(t *testing.T) {
		rt, err := e.sim.IssueRefreshToken(simClientID, []string{"api", "refresh_token"})
		if err != nil {
			t.Fatal(err)
		}
		act := e.importToken("acme", rt)
		tok := e.token("acme")
		if tok.GetFamilyId() != act.GetFamilyId() || !e.sim.AccessTokenActive(tok.GetAccessToken()) {
			t.Fatalf("after import got family %s, want %s", tok.GetFamilyId(), act.GetFamilyId())
		}
	})
}

// authorize runs the authorization-code flow with PKCE through the
// simulator's authorize endpoint, as a user's browser would.
func (e *env) authorize(id string) *rotavaultv1.FamilyActivated {
	t := e.t
	t.Helper()
	start, err := e.vault.Reauthenticate(ctxT(t), &rotavaultv1.ReauthenticateRequest{
		CredentialId: id,
		Flow: &rotavaultv1.ReauthenticateRequest_AuthorizationCodeStart{AuthorizationCodeStart: &rotavaultv1.AuthorizationCodeStart{
			RedirectUri: callbackURI,
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	pending := start.GetAuthorizationPending()
	browser := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := browser.Get(pending.GetAuthorizeUrl())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || resp.StatusCode < 300 || resp.StatusCode > 399 || loc.Query().Get("code") == "" {
		t.Fatalf("authorize answered %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if loc.Query().Get("state") != pending.GetState() {
		t.Fatal("state not echoed")
	}
	done, err := e.vault.Reauthenticate(ctxT(t), &rotavaultv1.ReauthenticateRequest{
		CredentialId: id,
		Flow: &rotavaultv1.ReauthenticateRequest_AuthorizationCodeComplete{AuthorizationCodeComplete: &rotavaultv1.AuthorizationCodeComplete{
			State: pending.GetState(), Code: loc.Query().Get("code"),
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	// The state is single use.
	_, err = e.vault.Reauthenticate(ctxT(t), &rotavaultv1.ReauthenticateRequest{
		CredentialId: id,
		Flow: &rotavaultv1.ReauthenticateRequest_AuthorizationCodeComplete{AuthorizationCodeComplete: &rotavaultv1.AuthorizationCodeComplete{
			State: pending.GetState(), Code: loc.Query().Get("code"),
		}},
	})
	wantCode(t, err, codes.InvalidArgument, "")
	return done.GetFamilyActivated()
}

func wantAudit(t *testing.T, e *env, action, credential, family string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(e.dataDir, "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.Contains(line, `"action":"`+action+`"`) && strings.Contains(line, `"credential":"`+credential+`"`) && strings.Contains(line, `"family":"`+family+`"`) {
			return
		}
	}
	t.Fatalf("no audit record %s for %s/%s in:\n%s", action, credential, family, raw)
}

func TestLostResponse(t *testing.T) {
	t.Run("no grace period: reported as a lost rotation", func(t *testing.T) {
		e := newEnv(t, envOptions{})
		e.installSalesforce("acme")
		stream, _ := e.watch(ctxT(t), "", "acme")
		first := e.token("acme")
		e.sim.InjectFailure(providersim.FailLoseResponse, 1)
		e.expire()
		_, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
		wantCode(t, err, codes.FailedPrecondition, server.ReasonReauthenticationRequired)
		n := nextNotice(t, stream)
		if n.GetReason() != rotavaultv1.RevocationReason_REVOCATION_REASON_LOST_ROTATION {
			t.Fatalf("reason = %s, want LOST_ROTATION (not theft)", n.GetReason())
		}
		wantAudit(t, e, "family_revoked", "acme", first.GetFamilyId())
		if s := e.sim.Stats(); s.LostResponses != 1 || s.ReuseDetections != 1 {
			t.Fatalf("provider saw %+v; want one lost response and one reuse (the single retry)", s)
		}
	})
	t.Run("grace period: the retry recovers", func(t *testing.T) {
		e := newEnv(t, envOptions{sim: providersim.Config{ReuseGrace: time.Minute}})
		e.installSalesforce("acme", func(s *rotavaultv1.CredentialSpec) { s.ReuseGracePeriod = durationpb.New(time.Minute) })
		first := e.token("acme")
		e.sim.InjectFailure(providersim.FailLoseResponse, 1)
		e.expire()
		tok := e.token("acme")
		if tok.GetFamilyId() != first.GetFamilyId() || tok.GetAccessToken() == first.GetAccessToken() {
			t.Fatalf("got family %s gen %d", tok.GetFamilyId(), tok.GetGeneration())
		}
		if !e.sim.AccessTokenActive(tok.GetAccessToken()) {
			t.Fatal("recovered token is not accepted by the provider")
		}
		if s := e.sim.Stats(); s.LostResponses != 1 || s.GraceReuses != 1 || s.FamiliesRevoked != 0 {
			t.Fatalf("provider saw %+v", s)
		}
		// And the family goes on rotating normally afterwards.
		e.expire()
		if next := e.token("acme"); next.GetFamilyId() != first.GetFamilyId() {
			t.Fatal("family lost after recovery")
		}
	})
}

func TestRejectedTokenReports(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.installSalesforce("acme")
	gen1 := e.token("acme")
	// Kill just the current access token at the provider (an admin ended the
	// session): the resource server now answers 401 for it.
	resp, err := http.PostForm(e.sim.URL()+"/services/oauth2/revoke", url.Values{"token": {gen1.GetAccessToken()}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	report := func(r *rotavaultv1.RejectedToken) (*rotavaultv1.GetAccessTokenResponse, error) {
		return e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme", RejectedToken: r})
	}
	refreshes := e.sim.Stats().RefreshRequests
	gen2, err := report(&rotavaultv1.RejectedToken{Token: &rotavaultv1.RejectedToken_Fingerprint{Fingerprint: gen1.GetFingerprint()}})
	if err != nil {
		t.Fatal(err)
	}
	if gen2.GetGeneration() != gen1.GetGeneration()+1 || e.sim.Stats().RefreshRequests != refreshes+1 {
		t.Fatalf("report of the current token: generation %d, %d refreshes", gen2.GetGeneration(), e.sim.Stats().RefreshRequests-refreshes)
	}

	// A late report about the old generation changes nothing.
	got, err := report(&rotavaultv1.RejectedToken{Token: &rotavaultv1.RejectedToken_Generation{Generation: gen1.GetGeneration()}})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetAccessToken() != gen2.GetAccessToken() || e.sim.Stats().RefreshRequests != refreshes+1 {
		t.Fatal("a report about an old generation caused a refresh")
	}

	// The current token is live at the provider: introspection says so, and
	// a report (within the rate limit window or not) spends no rotation.
	got, err = report(&rotavaultv1.RejectedToken{Token: &rotavaultv1.RejectedToken_Generation{Generation: gen2.GetGeneration()}})
	switch {
	case err == nil:
		if got.GetAccessToken() != gen2.GetAccessToken() {
			t.Fatal("a live token was replaced")
		}
	default:
		wantCode(t, err, codes.ResourceExhausted, server.ReasonRejectionRateLimited)
	}
	if e.sim.Stats().RefreshRequests != refreshes+1 {
		t.Fatal("a consumer burned a rotation at will")
	}
}

func TestRestartLosesNothingAndStoreHoldsNoSecretInClear(t *testing.T) {
	e := newEnv(t, envOptions{})
	imported := e.installSalesforce("acme")
	first := e.token("acme")
	refreshes := e.sim.Stats().RefreshRequests

	e.restart()
	afterRestart := e.token("acme")
	if afterRestart.GetAccessToken() != first.GetAccessToken() || e.sim.Stats().RefreshRequests != refreshes {
		t.Fatal("restart lost the cached access token (a cold start refreshed)")
	}
	e.expire()
	rotated := e.token("acme")
	e.restart()
	e.expire()
	again := e.token("acme")
	if again.GetFamilyId() != first.GetFamilyId() || again.GetGeneration() != rotated.GetGeneration()+1 {
		t.Fatalf("after restarts: family %s generation %d", again.GetFamilyId(), again.GetGeneration())
	}
	if s := e.sim.Stats(); s.ReuseDetections != 0 || s.FamiliesRevoked != 0 {
		t.Fatalf("a restart made us present a dead refresh token: %+v", s)
	}

	e.stop()
	raw, err := os.ReadFile(filepath.Join(e.dataDir, "rotavault.db"))
	if err != nil {
		t.Fatal(err)
	}
	for name, secret := range map[string]string{
		"imported refresh token": imported, "client secret": simClientSecret,
		"access token 1": first.GetAccessToken(), "access token 2": rotated.GetAccessToken(), "access token 3": again.GetAccessToken(),
	} {
		if strings.Contains(string(raw), secret) {
			t.Errorf("the store file contains the %s in clear", name)
		}
	}
}

func TestCancelledCallerDoesNotAbandonRotation(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.installSalesforce("acme")
	first := e.token("acme")
	e.expire()
	e.sim.SetLatency(200 * time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	target := e.sim.Stats().TokenRequests + 1
	go func() {
		// Give up once the refresh is at the provider.
		_ = e.sim.WaitForTokenRequests(ctxT(t), target)
		cancel()
	}()
	_, err := e.vault.GetAccessToken(ctx, &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
	if err == nil {
		t.Log("refresh finished before the cancel")
	}
	e.sim.SetLatency(0)
	tok := e.token("acme")
	if tok.GetFamilyId() != first.GetFamilyId() || tok.GetAccessToken() == first.GetAccessToken() {
		t.Fatal("rotation lost after a caller gave up")
	}
	if s := e.sim.Stats(); s.ReuseDetections != 0 {
		t.Fatalf("provider saw reuse: %+v", s)
	}
}

// Before and after turning rotation on at the provider, an admin checks
// whether it took: the credential says whether the last refresh rotated.
func TestCredentialShowsWhetherTheProviderRotates(t *testing.T) {
	for _, tc := range []struct {
		name     string
		disabled bool
		want     rotavaultv1.RefreshRotation
	}{
		{"rotation off at the provider", true, rotavaultv1.RefreshRotation_REFRESH_ROTATION_NOT_ROTATED},
		{"rotation on", false, rotavaultv1.RefreshRotation_REFRESH_ROTATION_ROTATED},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{sim: providersim.Config{DisableRotation: tc.disabled}})
			e.installSalesforce("acme") // the import refreshes once to prove the token
			e.expire()
			e.token("acme")
			resp, err := e.admin.GetCredential(ctxT(t), &rotavaultv1.GetCredentialRequest{CredentialId: "acme"})
			if err != nil {
				t.Fatal(err)
			}
			if got := resp.GetCredential().GetLastRefreshRotation(); got != tc.want {
				t.Fatalf("last refresh rotation %s, want %s", got, tc.want)
			}
		})
	}
}
