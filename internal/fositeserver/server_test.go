package fositeserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rotavault/rotavault/internal/fositeserver"
)

const (
	testClientID     = "rotavault-test"
	testClientSecret = "test-client-secret"
	testRedirectURI  = "http://127.0.0.1:8765/callback"

	// reuseHint is what fosite v0.49.0 appends to invalid_grant's
	// description when a rotated-out refresh token comes back.
	reuseHint = "The refresh token was already used."

	testTimeout = 30 * time.Second
)

// tokenResult is a token-endpoint answer, success or error.
type tokenResult struct {
	Status           int
	Body             string
	AccessToken      string `json:"access_token"`
	RefreshToken     string `json:"refresh_token"`
	ExpiresIn        int    `json:"expires_in"`
	Scope            string `json:"scope"`
	TokenType        string `json:"token_type"`
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
}

type testEnv struct {
	srv    *fositeserver.Server
	client *http.Client
}

func setupServerTest(t *testing.T, cfg fositeserver.Config) *testEnv {
	t.Helper()
	srv, err := fositeserver.Start(cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	client := &http.Client{Transport: &http.Transport{}, Timeout: testTimeout}
	t.Cleanup(func() {
		client.CloseIdleConnections()
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	srv.AddClient(testClientID, testClientSecret, []string{testRedirectURI})
	return &testEnv{srv: srv, client: client}
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func (e *testEnv) issue(t *testing.T) string {
	t.Helper()
	rt, err := e.srv.IssueRefreshToken(testContext(t), testClientID, testClientSecret, testRedirectURI, nil)
	if err != nil {
		t.Fatalf("IssueRefreshToken: %v", err)
	}
	return rt
}

func (e *testEnv) post(ctx context.Context, endpoint string, form url.Values, basicUser, basicPass string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if basicUser != "" {
		req.SetBasicAuth(basicUser, basicPass)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// tryRefresh posts a refresh_token grant with client_secret_post.
func (e *testEnv) tryRefresh(ctx context.Context, refreshToken string) (tokenResult, error) {
	status, body, err := e.post(ctx, e.srv.TokenURL(), url.Values{
		"grant_type":    {"refresh_token"},
		"refresh_token": {refreshToken},
		"client_id":     {testClientID},
		"client_secret": {testClientSecret},
	}, "", "")
	if err != nil {
		return tokenResult{}, err
	}
	res := tokenResult{Status: status, Body: string(body)}
	if err := json.Unmarshal(body, &res); err != nil {
		return res, err
	}
	return res, nil
}

func (e *testEnv) refresh(t *testing.T, refreshToken string) tokenResult {
	t.Helper()
	res, err := e.tryRefresh(testContext(t), refreshToken)
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	return res
}

func (e *testEnv) mustRefresh(t *testing.T, refreshToken string) tokenResult {
	t.Helper()
	res := e.refresh(t, refreshToken)
	if res.Status != http.StatusOK || res.RefreshToken == "" {
		t.Fatalf("refresh: status %d error %q %q, want 200 with a refresh token", res.Status, res.Error, res.ErrorDescription)
	}
	return res
}

// active introspects token with HTTP Basic client authentication, the only
// client authentication fosite's introspection endpoint takes.
func (e *testEnv) active(t *testing.T, token string) bool {
	t.Helper()
	status, body, err := e.post(testContext(t), e.srv.IntrospectionURL(), url.Values{"token": {token}}, testClientID, testClientSecret)
	if err != nil {
		t.Fatalf("introspect: %v", err)
	}
	if status != http.StatusOK {
		t.Fatalf("introspect: status %d: %s", status, body)
	}
	var r struct {
		Active bool `json:"active"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("introspect: %v", err)
	}
	return r.Active
}

func assertInvalidGrant(t *testing.T, res tokenResult, wantHint string) {
	t.Helper()
	if res.Status != http.StatusBadRequest || res.Error != "invalid_grant" {
		t.Fatalf("got status %d error %q, want 400 invalid_grant", res.Status, res.Error)
	}
	if res.RefreshToken != "" || res.AccessToken != "" {
		t.Fatalf("error response carries tokens")
	}
	if wantHint != "" && !strings.Contains(res.ErrorDescription, wantHint) {
		t.Fatalf("error_description %q does not contain %q", res.ErrorDescription, wantHint)
	}
}

func TestIssueRefreshToken(t *testing.T) {
	env := setupServerTest(t, fositeserver.Config{})

	tests := []struct {
		name         string
		clientID     string
		secret       string
		redirectURI  string
		scopes       []string
		wantErr      error  // sentinel, if any
		wantOAuthErr string // OAuth error code, if any
	}{
		{name: "all client scopes", clientID: testClientID, secret: testClientSecret, redirectURI: testRedirectURI},
		{name: "offline_access", clientID: testClientID, secret: testClientSecret, redirectURI: testRedirectURI, scopes: []string{"offline_access", "api"}},
		{name: "offline", clientID: testClientID, secret: testClientSecret, redirectURI: testRedirectURI, scopes: []string{"offline"}},
		{name: "loopback redirect on another port", clientID: testClientID, secret: testClientSecret, redirectURI: "http://127.0.0.1:9999/callback"},
		{name: "no offline scope", clientID: testClientID, secret: testClientSecret, redirectURI: testRedirectURI, scopes: []string{"api"}, wantErr: fositeserver.ErrNoRefreshToken},
		{name: "scope the client lacks", clientID: testClientID, secret: testClientSecret, redirectURI: testRedirectURI, scopes: []string{"offline", "admin"}, wantOAuthErr: "invalid_scope"},
		{name: "wrong secret", clientID: testClientID, secret: "wrong", redirectURI: testRedirectURI, wantOAuthErr: "invalid_client"},
		{name: "unknown client", clientID: "nobody", secret: testClientSecret, redirectURI: testRedirectURI, wantOAuthErr: "invalid_client"},
		{name: "unregistered redirect", clientID: testClientID, secret: testClientSecret, redirectURI: "http://127.0.0.1:8765/elsewhere", wantOAuthErr: "invalid_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt, err := env.srv.IssueRefreshToken(testContext(t), tt.clientID, tt.secret, tt.redirectURI, tt.scopes)
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
			case tt.wantOAuthErr != "":
				var oe *fositeserver.OAuthError
				if !errors.As(err, &oe) || oe.Code != tt.wantOAuthErr {
					t.Fatalf("err = %v, want OAuth error %s", err, tt.wantOAuthErr)
				}
			default:
				if err != nil {
					t.Fatalf("IssueRefreshToken: %v", err)
				}
				if !env.active(t, rt) {
					t.Fatalf("issued refresh token is not active")
				}
			}
		})
	}

	if got := env.srv.Stats(); got != (fositeserver.Stats{}) {
		t.Errorf("Stats after IssueRefreshToken = %+v, want zero: issuing a family is setup, not traffic", got)
	}
}

func TestIssueRefreshTokenFamiliesAreIndependent(t *testing.T) {
	env := setupServerTest(t, fositeserver.Config{})
	a, b := env.issue(t), env.issue(t)
	if a == b {
		t.Fatalf("two IssueRefreshToken calls returned the same token")
	}
	a1 := env.mustRefresh(t, a)
	assertInvalidGrant(t, env.refresh(t, a), reuseHint) // kills family a

	if env.active(t, a1.RefreshToken) {
		t.Errorf("family a survived reuse")
	}
	if !env.active(t, b) {
		t.Errorf("reuse in family a revoked family b")
	}
	env.mustRefresh(t, b)
}

func TestRefreshRotates(t *testing.T) {
	env := setupServerTest(t, fositeserver.Config{AccessTokenLifespan: 10 * time.Minute})
	rt0 := env.issue(t)

	res := env.mustRefresh(t, rt0)
	if res.RefreshToken == rt0 {
		t.Fatalf("refresh returned the same refresh token: no rotation")
	}
	if res.AccessToken == "" || !strings.EqualFold(res.TokenType, "bearer") {
		t.Errorf("access_token empty or token_type %q, want a bearer token", res.TokenType)
	}
	if res.ExpiresIn <= 0 || res.ExpiresIn > 600 {
		t.Errorf("expires_in = %d, want within the configured 600 s", res.ExpiresIn)
	}
	for _, want := range []string{"offline_access", "api"} {
		if !strings.Contains(" "+res.Scope+" ", " "+want+" ") {
			t.Errorf("scope %q lacks %q: the refresh lost granted scopes", res.Scope, want)
		}
	}
	if env.active(t, rt0) {
		t.Errorf("old refresh token still active after rotation")
	}
	if !env.active(t, res.RefreshToken) || !env.active(t, res.AccessToken) {
		t.Errorf("new refresh or access token inactive")
	}

	// The new token rotates in turn.
	res2 := env.mustRefresh(t, res.RefreshToken)
	if env.active(t, res.AccessToken) {
		t.Errorf("fosite's memory store revokes the previous access token on rotation; it stayed active")
	}
	if !env.active(t, res2.AccessToken) {
		t.Errorf("newest access token inactive")
	}

	want := fositeserver.Stats{TokenRequests: 2, RefreshRequests: 2, RefreshSuccesses: 2}
	if got := env.srv.Stats(); got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
}

func TestReuseRevokesFamily(t *testing.T) {
	tests := []struct {
		name  string
		reuse int // which generation to present again: 0 = issued, 1 = first rotation
	}{
		{name: "immediately previous token", reuse: 1},
		{name: "older token", reuse: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := setupServerTest(t, fositeserver.Config{})
			rt0 := env.issue(t)
			g1 := env.mustRefresh(t, rt0)
			g2 := env.mustRefresh(t, g1.RefreshToken)
			generations := []string{rt0, g1.RefreshToken}

			reused := env.refresh(t, generations[tt.reuse])
			assertInvalidGrant(t, reused, reuseHint)
			t.Logf("fosite on reuse: HTTP %d %s", reused.Status, reused.Body)

			if env.active(t, g2.RefreshToken) {
				t.Errorf("current refresh token still active after reuse")
			}
			if env.active(t, g2.AccessToken) {
				t.Errorf("current access token still active after reuse")
			}
			current := env.refresh(t, g2.RefreshToken)
			assertInvalidGrant(t, current, "")
			t.Logf("fosite on the revoked current token: HTTP %d %s", current.Status, current.Body)

			want := fositeserver.Stats{
				TokenRequests: 4, RefreshRequests: 4, RefreshSuccesses: 2, RefreshFailures: 2, InvalidGrants: 2,
			}
			if got := env.srv.Stats(); got != want {
				t.Errorf("Stats = %+v, want %+v", got, want)
			}
		})
	}
}

func TestReuseAfterFamilyRevokedIsNotFound(t *testing.T) {
	env := setupServerTest(t, fositeserver.Config{})
	rt0 := env.issue(t)
	env.mustRefresh(t, rt0)
	assertInvalidGrant(t, env.refresh(t, rt0), reuseHint)

	// fosite deletes the reused token's record when it detects reuse, so the
	// same token a third time is unknown rather than reused.
	third := env.refresh(t, rt0)
	assertInvalidGrant(t, third, "The refresh token is malformed or not valid.")
}

func TestRevokedRefreshTokenFailsRefresh(t *testing.T) {
	env := setupServerTest(t, fositeserver.Config{})
	rt0 := env.issue(t)
	g1 := env.mustRefresh(t, rt0)

	// Revocation authenticates like the token endpoint: client_secret_post.
	status, body, err := env.post(testContext(t), env.srv.RevocationURL(), url.Values{
		"token":           {g1.RefreshToken},
		"token_type_hint": {"refresh_token"},
		"client_id":       {testClientID},
		"client_secret":   {testClientSecret},
	}, "", "")
	if err != nil || status != http.StatusOK {
		t.Fatalf("revoke: status %d err %v body %s", status, err, body)
	}
	if env.active(t, g1.AccessToken) {
		t.Errorf("revoking the refresh token left its access token active")
	}
	assertInvalidGrant(t, env.refresh(t, g1.RefreshToken), "")
}

func TestTokenEndpointClientAuthentication(t *testing.T) {
	env := setupServerTest(t, fositeserver.Config{})
	rt := env.issue(t)

	tests := []struct {
		name       string
		form       url.Values
		basic      bool
		wantStatus int
		wantError  string
	}{
		{
			name:       "HTTP Basic is refused for a client_secret_post client",
			form:       url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}},
			basic:      true,
			wantStatus: http.StatusUnauthorized,
			wantError:  "invalid_client",
		},
		{
			name:       "wrong secret",
			form:       url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {testClientID}, "client_secret": {"wrong"}},
			wantStatus: http.StatusUnauthorized,
			wantError:  "invalid_client",
		},
		{
			name:       "unknown refresh token",
			form:       url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"ory_rt_unknown.unknown"}, "client_id": {testClientID}, "client_secret": {testClientSecret}},
			wantStatus: http.StatusBadRequest,
			wantError:  "invalid_grant",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			user, pass := "", ""
			if tt.basic {
				user, pass = testClientID, testClientSecret
			}
			status, body, err := env.post(testContext(t), env.srv.TokenURL(), tt.form, user, pass)
			if err != nil {
				t.Fatalf("post: %v", err)
			}
			var res tokenResult
			if err := json.Unmarshal(body, &res); err != nil {
				t.Fatalf("decoding %s: %v", body, err)
			}
			if status != tt.wantStatus || res.Error != tt.wantError {
				t.Fatalf("got %d %q, want %d %q", status, res.Error, tt.wantStatus, tt.wantError)
			}
		})
	}

	// None of these rotated the family: the token still refreshes.
	env.mustRefresh(t, rt)
}

func TestLostResponse(t *testing.T) {
	env := setupServerTest(t, fositeserver.Config{})
	rt0 := env.issue(t)

	env.srv.LoseNextResponses(1)
	_, err := env.tryRefresh(testContext(t), rt0)
	if err == nil {
		t.Fatalf("refresh got an answer, want the connection closed without one")
	}
	t.Logf("client error on the lost response: %v", err)
	got := env.srv.Stats()
	want := fositeserver.Stats{TokenRequests: 1, RefreshRequests: 1, RefreshSuccesses: 1, LostResponses: 1}
	if got != want {
		t.Errorf("Stats after lost response = %+v, want %+v", got, want)
	}
	if env.active(t, rt0) {
		t.Fatalf("refresh token still active: the lost request did not rotate it")
	}

	// The client's natural retry is a reuse, and costs the family.
	assertInvalidGrant(t, env.refresh(t, rt0), reuseHint)
	if got := env.srv.Stats().LostResponses; got != 1 {
		t.Errorf("LostResponses = %d after the retry, want 1: only the next request was to be lost", got)
	}
}

func TestLoseNextResponsesCounts(t *testing.T) {
	tests := []struct {
		name     string
		settings []int // successive LoseNextResponses calls
		wantLost int   // of three refreshes that follow
	}{
		{name: "none", settings: nil, wantLost: 0},
		{name: "two", settings: []int{2}, wantLost: 2},
		{name: "later call replaces", settings: []int{3, 1}, wantLost: 1},
		{name: "zero cancels", settings: []int{2, 0}, wantLost: 0},
		{name: "negative cancels", settings: []int{2, -1}, wantLost: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := setupServerTest(t, fositeserver.Config{})
			for _, n := range tt.settings {
				env.srv.LoseNextResponses(n)
			}
			lost := 0
			for range 3 {
				// Each on a fresh family, so that the outcome is only about losing.
				if _, err := env.tryRefresh(testContext(t), env.issue(t)); err != nil {
					lost++
				}
			}
			if lost != tt.wantLost {
				t.Errorf("client saw %d lost responses, want %d", lost, tt.wantLost)
			}
			if got := env.srv.Stats(); got.LostResponses != tt.wantLost || got.RefreshSuccesses != 3 {
				t.Errorf("Stats = %+v, want LostResponses %d and RefreshSuccesses 3", got, tt.wantLost)
			}
		})
	}
}

func TestConcurrentRefreshOfOneToken(t *testing.T) {
	const workers = 8
	env := setupServerTest(t, fositeserver.Config{})
	rt0 := env.issue(t)
	ctx := testContext(t)

	waitErr := make(chan error, 1)
	go func() { waitErr <- env.srv.WaitForTokenRequests(ctx, workers) }()

	results := make([]tokenResult, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			results[i], errs[i] = env.tryRefresh(ctx, rt0)
			_ = env.srv.Stats() // concurrent with other requests, for the race detector
		})
	}
	wg.Wait()

	if err := <-waitErr; err != nil {
		t.Fatalf("WaitForTokenRequests: %v", err)
	}
	var winner tokenResult
	successes, invalidGrants := 0, 0
	for i, res := range results {
		if errs[i] != nil {
			t.Fatalf("refresh %d: %v", i, errs[i])
		}
		switch {
		case res.Status == http.StatusOK:
			successes++
			winner = res
		case res.Error == "invalid_grant":
			invalidGrants++
		default:
			t.Errorf("refresh %d: status %d error %q", i, res.Status, res.Error)
		}
	}
	if successes != 1 || invalidGrants != workers-1 {
		t.Fatalf("%d successes and %d invalid_grant, want 1 and %d: one token, one rotation", successes, invalidGrants, workers-1)
	}
	if env.active(t, winner.RefreshToken) {
		t.Errorf("winner's refresh token survived the concurrent reuses")
	}

	want := fositeserver.Stats{
		TokenRequests: workers, RefreshRequests: workers, RefreshSuccesses: 1,
		RefreshFailures: workers - 1, InvalidGrants: workers - 1,
	}
	if got := env.srv.Stats(); got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
}

func TestWaitForTokenRequests(t *testing.T) {
	t.Run("already reached", func(t *testing.T) {
		env := setupServerTest(t, fositeserver.Config{})
		if err := env.srv.WaitForTokenRequests(testContext(t), 0); err != nil {
			t.Fatalf("WaitForTokenRequests(0) = %v", err)
		}
	})

	t.Run("reached later", func(t *testing.T) {
		env := setupServerTest(t, fositeserver.Config{})
		rt := env.issue(t)
		ctx := testContext(t)
		done := make(chan error, 1)
		go func() { done <- env.srv.WaitForTokenRequests(ctx, 1) }()
		env.mustRefresh(t, rt)
		if err := <-done; err != nil {
			t.Fatalf("WaitForTokenRequests: %v", err)
		}
	})

	t.Run("context ends", func(t *testing.T) {
		env := setupServerTest(t, fositeserver.Config{})
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		if err := env.srv.WaitForTokenRequests(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want context.DeadlineExceeded", err)
		}
	})

	t.Run("server closes", func(t *testing.T) {
		env := setupServerTest(t, fositeserver.Config{})
		done := make(chan error, 1)
		go func() { done <- env.srv.WaitForTokenRequests(testContext(t), 1) }()
		if err := env.srv.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := <-done; !errors.Is(err, fositeserver.ErrClosed) {
			t.Fatalf("err = %v, want ErrClosed", err)
		}
		if _, err := env.srv.IssueRefreshToken(testContext(t), testClientID, testClientSecret, testRedirectURI, nil); !errors.Is(err, fositeserver.ErrClosed) {
			t.Fatalf("IssueRefreshToken after Close: err = %v, want ErrClosed", err)
		}
	})
}

func TestURLs(t *testing.T) {
	env := setupServerTest(t, fositeserver.Config{})
	base := env.srv.URL()
	if !strings.HasPrefix(base, "http://127.0.0.1:") {
		t.Fatalf("URL() = %q, want http://127.0.0.1:PORT", base)
	}
	tests := []struct{ got, want string }{
		{env.srv.TokenURL(), base + "/oauth2/token"},
		{env.srv.AuthorizeURL(), base + "/oauth2/auth"},
		{env.srv.RevocationURL(), base + "/oauth2/revoke"},
		{env.srv.IntrospectionURL(), base + "/oauth2/introspect"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

// InvalidGrantStatus changes only the status line of invalid_grant answers
// (Auth0 answers reuse with 403): fosite still detects the reuse and revokes
// the family.
func TestInvalidGrantStatus(t *testing.T) {
	env := setupServerTest(t, fositeserver.Config{InvalidGrantStatus: http.StatusForbidden})
	rt0 := env.issue(t)
	g1 := env.mustRefresh(t, rt0)

	reused := env.refresh(t, rt0)
	if reused.Status != http.StatusForbidden || reused.Error != "invalid_grant" || !strings.Contains(reused.ErrorDescription, reuseHint) {
		t.Fatalf("reuse: HTTP %d %q %q, want 403 invalid_grant with fosite's reuse hint", reused.Status, reused.Error, reused.ErrorDescription)
	}
	if env.active(t, g1.RefreshToken) {
		t.Error("the family's current refresh token is still active after the reuse")
	}
	// Other errors keep their status.
	status, body, err := env.post(testContext(t), env.srv.TokenURL(), url.Values{"grant_type": {"password"}, "client_id": {testClientID}, "client_secret": {testClientSecret}}, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if status != http.StatusBadRequest || strings.Contains(string(body), "invalid_grant") {
		t.Errorf("unsupported grant: HTTP %d %s, want fosite's own 400", status, body)
	}
	if s := env.srv.Stats(); s.InvalidGrants != 1 || s.RefreshFailures != 1 {
		t.Errorf("Stats = %+v, want one invalid_grant refresh failure", s)
	}

	for _, bad := range []int{200, 302, 500, 600, -1} {
		if srv, err := fositeserver.Start(fositeserver.Config{InvalidGrantStatus: bad}); err == nil {
			_ = srv.Close()
			t.Errorf("Start accepted InvalidGrantStatus %d", bad)
		}
	}
}

// Introspections counts introspection requests, refresh tokens included;
// asking about a refresh token does not rotate it.
func TestIntrospectionsCountAndDoNotRotate(t *testing.T) {
	env := setupServerTest(t, fositeserver.Config{})
	rt0 := env.issue(t)
	for range 3 {
		if !env.active(t, rt0) {
			t.Fatal("a freshly issued refresh token is inactive")
		}
	}
	if got := env.srv.Introspections(); got != 3 {
		t.Errorf("Introspections = %d, want 3", got)
	}
	// Still the current token: it refreshes, and only then turns inactive.
	g1 := env.mustRefresh(t, rt0)
	if env.active(t, rt0) || !env.active(t, g1.RefreshToken) {
		t.Error("after the refresh the old token should be inactive and the new one active")
	}
	if s := env.srv.Stats(); s.RefreshRequests != 1 || s.InvalidGrants != 0 {
		t.Errorf("Stats = %+v, want one refresh and no invalid_grant", s)
	}
}
