package providersim

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRefreshResponseShape(t *testing.T) {
	t.Parallel()
	h := setupProviderTest(t, Config{})
	res := h.refresh(h.login())
	if res.status != http.StatusOK {
		t.Fatalf("status %d body %s", res.status, res.raw)
	}
	if ct := res.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type = %q", ct)
	}
	if _, ok := res.obj["expires_in"]; ok {
		t.Error("response carries expires_in; Salesforce never sends it")
	}
	want := map[string]string{
		"token_type":   "Bearer",
		"instance_url": h.srv.URL(),
		"id":           h.srv.URL() + "/id/00Dxx0000001gEREAY/005xx000001X8Uz",
		"scope":        "api refresh_token",
		"issued_at":    strconv.FormatInt(h.clock.Now().UnixMilli(), 10),
	}
	for k, v := range want {
		if got := res.str(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if at := res.str("access_token"); !strings.HasPrefix(at, "00D") || !strings.Contains(at, "!") {
		t.Errorf("access token does not look like Salesforce's (00D…!…)")
	}
	if rt := res.str("refresh_token"); !strings.HasPrefix(rt, "5Aep") {
		t.Errorf("refresh token does not look like Salesforce's (5Aep…)")
	}
	if res.str("signature") == "" {
		t.Error("no signature")
	}
}

func TestRotation(t *testing.T) {
	t.Parallel()
	h := setupProviderTest(t, Config{})
	r1 := h.login()
	a1, r2 := h.mustRefresh(r1)
	a2, r3 := h.mustRefresh(r2)
	if r2 == "" || r2 == r1 || r3 == r2 || r3 == r1 {
		t.Fatal("each refresh must return a new refresh token")
	}
	// Salesforce keeps earlier access tokens alive until session timeout.
	for i, a := range []string{a1, a2} {
		if got := h.apiStatus(a); got != http.StatusOK {
			t.Errorf("access token %d: API status %d, want 200", i+1, got)
		}
	}
	st := h.srv.Stats()
	if st.Rotations != 2 || st.RefreshRequests != 2 || st.ReuseDetections != 0 {
		t.Errorf("stats = %+v, want 2 rotations, 2 refreshes, no reuse", st)
	}
}

func TestReuseRevokesFamily(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// reuse picks the superseded token to present from r1, r2 (r3 current).
		reuse func(r1, r2 string) string
	}{
		{"immediately previous token", func(_, r2 string) string { return r2 }},
		{"older token", func(r1, _ string) string { return r1 }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := setupProviderTest(t, Config{})
			r1 := h.login()
			a1, r2 := h.mustRefresh(r1)
			a2, r3 := h.mustRefresh(r2)

			assertInvalidGrant(t, h.refresh(tc.reuse(r1, r2)))
			// The whole family is gone: the current token and every access token.
			assertInvalidGrant(t, h.refresh(r3))
			for i, a := range []string{a1, a2} {
				if got := h.apiStatus(a); got != http.StatusUnauthorized {
					t.Errorf("access token %d: API status %d, want 401", i+1, got)
				}
			}
			st := h.srv.Stats()
			if st.ReuseDetections != 1 || st.FamiliesRevoked != 1 {
				t.Errorf("stats = %+v, want 1 reuse detection, 1 family revoked", st)
			}
		})
	}
}

func TestAPIRejectsDeadSessionLikeSalesforce(t *testing.T) {
	t.Parallel()
	h := setupProviderTest(t, Config{})
	res, err := h.do(t.Context(), http.MethodGet, "/services/data/v62.0/", nil, func(r *http.Request) {
		r.Header.Set("Authorization", "Bearer 00Dxx0000001gER!unknown")
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `[{"errorCode":"INVALID_SESSION_ID","message":"Session expired or invalid"}]`
	if res.status != http.StatusUnauthorized || string(res.raw) != want {
		t.Errorf("got %d %s, want 401 %s", res.status, res.raw, want)
	}
}

func TestReuseGrace(t *testing.T) {
	t.Parallel()
	const grace = 30 * time.Second
	tests := []struct {
		name string
		run  func(t *testing.T, h *harness, r1, r2 string)
	}{
		{"previous token within grace returns a new pair", func(t *testing.T, h *harness, r1, r2 string) {
			h.clock.Add(grace - time.Second)
			a, r3 := h.mustRefresh(r1)
			if r3 == "" || r3 == r1 || r3 == r2 {
				t.Fatal("grace reuse must return a new refresh token")
			}
			if got := h.apiStatus(a); got != http.StatusOK {
				t.Errorf("API status %d, want 200", got)
			}
			// The new token is the family's current one.
			h.mustRefresh(r3)
			if st := h.srv.Stats(); st.GraceReuses != 1 || st.ReuseDetections != 0 {
				t.Errorf("stats = %+v, want 1 grace reuse, no reuse detection", st)
			}
		}},
		{"token issued in between is invalidated", func(t *testing.T, h *harness, r1, r2 string) {
			_, r3 := h.mustRefresh(r1)
			assertInvalidGrant(t, h.refresh(r2))
			// Presenting it was reuse: the family is gone.
			assertInvalidGrant(t, h.refresh(r3))
		}},
		{"previous token accepted only once", func(t *testing.T, h *harness, r1, _ string) {
			_, r3 := h.mustRefresh(r1)
			assertInvalidGrant(t, h.refresh(r1))
			assertInvalidGrant(t, h.refresh(r3))
			if st := h.srv.Stats(); st.ReuseDetections != 1 {
				t.Errorf("ReuseDetections = %d, want 1", st.ReuseDetections)
			}
		}},
		{"previous token after grace revokes the family", func(t *testing.T, h *harness, r1, r2 string) {
			h.clock.Add(grace)
			assertInvalidGrant(t, h.refresh(r1))
			assertInvalidGrant(t, h.refresh(r2))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := setupProviderTest(t, Config{ReuseGrace: grace})
			r1 := h.login()
			_, r2 := h.mustRefresh(r1)
			tc.run(t, h, r1, r2)
		})
	}
}

func TestDisableRotation(t *testing.T) {
	t.Parallel()
	h := setupProviderTest(t, Config{DisableRotation: true})
	r := h.login()
	for i := range 3 {
		res := h.refresh(r)
		if res.status != http.StatusOK {
			t.Fatalf("refresh %d: status %d body %s", i, res.status, res.raw)
		}
		if _, ok := res.obj["refresh_token"]; ok {
			t.Fatalf("refresh %d: legacy mode must not return a refresh_token", i)
		}
		if res.str("access_token") == "" {
			t.Fatalf("refresh %d: no access token", i)
		}
	}
	if st := h.srv.Stats(); st.Rotations != 0 || st.RefreshRequests != 3 {
		t.Errorf("stats = %+v, want 3 refreshes, 0 rotations", st)
	}
}

func verifySignature(secret string, res result) bool {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(res.str("id") + res.str("issued_at")))
	want := base64.StdEncoding.EncodeToString(m.Sum(nil))
	return hmac.Equal([]byte(want), []byte(res.str("signature")))
}

func TestSignature(t *testing.T) {
	t.Parallel()
	h := setupProviderTest(t, Config{})
	r := h.login()
	steps := []struct {
		corrupt bool
		valid   bool
	}{{false, true}, {true, false}, {false, true}}
	for i, st := range steps {
		h.srv.CorruptSignatures(st.corrupt)
		res := h.refresh(r)
		if res.status != http.StatusOK {
			t.Fatalf("step %d: status %d", i, res.status)
		}
		r = res.str("refresh_token")
		if got := verifySignature(testSecret, res); got != st.valid {
			t.Errorf("step %d (corrupt=%v): signature verifies = %v, want %v", i, st.corrupt, got, st.valid)
		}
	}
}

func TestRefreshClientErrors(t *testing.T) {
	t.Parallel()
	basicAuth := func(r *http.Request) {
		r.SetBasicAuth(url.QueryEscape(testClientID), url.QueryEscape(testSecret))
	}
	tests := []struct {
		name       string
		form       func(url.Values)
		req        func(*http.Request)
		wantStatus int
		wantError  string
	}{
		{name: "unknown client_id", form: func(f url.Values) { f.Set("client_id", "nope") },
			wantStatus: 400, wantError: "invalid_client_id"},
		{name: "missing client_id", form: func(f url.Values) { f.Del("client_id") },
			wantStatus: 400, wantError: "invalid_client_id"},
		{name: "another app's credentials", form: func(f url.Values) {
			f.Set("client_id", "other-app")
			f.Set("client_secret", "other-secret")
		}, wantStatus: 400, wantError: "invalid_client_id"},
		{name: "wrong secret", form: func(f url.Values) { f.Set("client_secret", "wrong") },
			wantStatus: 400, wantError: "invalid_client"},
		{name: "no secret is allowed on refresh", form: func(f url.Values) { f.Del("client_secret") },
			wantStatus: 200},
		{name: "HTTP Basic credentials", form: func(f url.Values) {
			f.Del("client_id")
			f.Del("client_secret")
		}, req: basicAuth, wantStatus: 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := setupProviderTest(t, Config{})
			h.srv.AddClient(Client{ID: "other-app", Secret: "other-secret"})
			old := h.login()
			_, current := h.mustRefresh(old)
			// Errors are tried with the superseded token: a client error must
			// be answered before reuse detection could revoke anything.
			form := refreshForm(old)
			if tc.wantStatus == http.StatusOK {
				form = refreshForm(current)
			}
			tc.form(form)
			res, err := h.do(t.Context(), http.MethodPost, "/services/oauth2/token", form, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantStatus == http.StatusOK {
				if res.status != http.StatusOK || res.str("refresh_token") == "" {
					t.Fatalf("status %d body %s, want 200 with a new refresh token", res.status, res.raw)
				}
				return
			}
			assertOAuthError(t, res, tc.wantStatus, tc.wantError)
			if st := h.srv.Stats(); st.ReuseDetections != 0 || st.FamiliesRevoked != 0 {
				t.Errorf("a client error revoked the family: %+v", st)
			}
			h.mustRefresh(current)
		})
	}
}

func TestUnsupportedGrant(t *testing.T) {
	t.Parallel()
	h := setupProviderTest(t, Config{})
	for _, gt := range []string{"password", "", "client_credentials"} {
		res := h.post("/services/oauth2/token", url.Values{"grant_type": {gt}, "client_id": {testClientID}})
		assertOAuthError(t, res, http.StatusBadRequest, "unsupported_grant_type")
	}
}

func TestOversizedBodyRejected(t *testing.T) {
	t.Parallel()
	h := setupProviderTest(t, Config{})
	form := refreshForm(h.login())
	form.Set("padding", strings.Repeat("x", 80<<10))
	assertOAuthError(t, h.post("/services/oauth2/token", form), http.StatusBadRequest, "invalid_request")
}

// Concurrent refreshes with one token are what a vault without coordination
// does; Salesforce lets one win and treats the rest as reuse.
func TestConcurrentRefreshSameToken(t *testing.T) {
	t.Parallel()
	h := setupProviderTest(t, Config{})
	r1 := h.login()
	const n = 8
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		results = make([]result, n)
		errs    = make([]error, n)
	)
	for i := range n {
		wg.Go(func() {
			<-start
			results[i], errs[i] = h.do(t.Context(), http.MethodPost, "/services/oauth2/token", refreshForm(r1), nil)
		})
	}
	close(start)
	wg.Wait()
	var winner string
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("request %d: %v", i, errs[i])
		}
		switch results[i].status {
		case http.StatusOK:
			if winner != "" {
				t.Fatal("more than one concurrent refresh succeeded")
			}
			winner = results[i].str("refresh_token")
		default:
			assertInvalidGrant(t, results[i])
		}
	}
	if winner == "" {
		t.Fatal("no concurrent refresh succeeded")
	}
	// The losers' reuse revoked the family, the winner's new token included.
	assertInvalidGrant(t, h.refresh(winner))
	if st := h.srv.Stats(); st.Rotations != 1 || st.ReuseDetections != 1 || st.FamiliesRevoked != 1 {
		t.Errorf("stats = %+v, want 1 rotation, 1 reuse detection, 1 family revoked", st)
	}
}

// syncBuffer is a strings.Builder safe for the server's concurrent logging.
type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestLogsCarryNoSecrets(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	h := setupProviderTest(t, Config{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	code := h.authCode("api refresh_token", challengeOf(testVerifier))
	res := h.post("/services/oauth2/token", codeForm(code, testVerifier))
	r1 := res.str("refresh_token")
	a2, r2 := h.mustRefresh(r1)
	assertInvalidGrant(t, h.refresh(r1)) // reuse: logged as a warning
	h.srv.InjectFailure(FailLoseResponse, 1)
	_, _ = h.do(t.Context(), http.MethodPost, "/services/oauth2/token", refreshForm(r2), nil)

	out := logs.String()
	if !strings.Contains(out, "reused") {
		t.Fatalf("reuse not logged; logs:\n%s", out)
	}
	secrets := map[string]string{
		"code": code, "verifier": testVerifier, "client secret": testSecret,
		"access token": res.str("access_token"), "access token 2": a2,
		"refresh token": r1, "refresh token 2": r2,
	}
	for name, v := range secrets {
		if v == "" {
			t.Fatalf("%s is empty", name)
		}
		if strings.Contains(out, v) {
			t.Errorf("logs contain the %s", name)
		}
	}
}
