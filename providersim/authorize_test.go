package providersim

import (
	"net/http"
	"net/url"
	"testing"
	"time"
)

// authorize calls the consent endpoint and returns the response and its
// parsed redirect target (nil when there is none).
func (h *harness) authorize(params url.Values) (result, *url.URL) {
	h.t.Helper()
	res, err := h.do(h.t.Context(), http.MethodGet, "/services/oauth2/authorize?"+params.Encode(), nil, nil)
	if err != nil {
		h.t.Fatalf("authorize: %v", err)
	}
	loc := res.header.Get("Location")
	if loc == "" {
		return res, nil
	}
	u, err := url.Parse(loc)
	if err != nil {
		h.t.Fatalf("Location %q: %v", loc, err)
	}
	return res, u
}

func authorizeParams(scope, challenge string) url.Values {
	p := url.Values{
		"response_type": {"code"},
		"client_id":     {testClientID},
		"redirect_uri":  {testRedirect},
		"state":         {"st&te=1"},
		"scope":         {scope},
	}
	if challenge != "" {
		p.Set("code_challenge", challenge)
		p.Set("code_challenge_method", "S256")
	}
	return p
}

// authCode runs the consent step and returns the authorization code.
func (h *harness) authCode(scope, challenge string) string {
	h.t.Helper()
	res, u := h.authorize(authorizeParams(scope, challenge))
	if res.status != http.StatusFound || u == nil {
		h.t.Fatalf("authorize: status %d body %s, want 302", res.status, res.raw)
	}
	q := u.Query()
	if q.Get("state") != "st&te=1" || q.Get("app") != "rv" {
		h.t.Fatalf("redirect lost state or the redirect URI's own query: %v", q)
	}
	code := q.Get("code")
	if code == "" {
		h.t.Fatalf("no code in redirect: error=%q", q.Get("error"))
	}
	return code
}

func codeForm(code, verifier string) url.Values {
	f := url.Values{
		"grant_type":    {"authorization_code"},
		"code":          {code},
		"redirect_uri":  {testRedirect},
		"client_id":     {testClientID},
		"client_secret": {testSecret},
	}
	if verifier != "" {
		f.Set("code_verifier", verifier)
	}
	return f
}

func TestAuthorizationCodeExchange(t *testing.T) {
	t.Parallel()
	const tildeVerifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjX~"
	tests := []struct {
		name      string
		scope     string
		challenge string
		form      func(code string) url.Values
		before    func(h *harness)
		// wantError "" means success.
		wantError   string
		wantRefresh bool
	}{
		{name: "PKCE with refresh_token scope", scope: "api refresh_token", challenge: challengeOf(testVerifier),
			form: func(c string) url.Values { return codeForm(c, testVerifier) }, wantRefresh: true},
		{name: "offline_access grants a refresh token", scope: "api offline_access", challenge: challengeOf(testVerifier),
			form: func(c string) url.Values { return codeForm(c, testVerifier) }, wantRefresh: true},
		{name: "full grants a refresh token", scope: "full",
			form: func(c string) url.Values { return codeForm(c, "") }, wantRefresh: true},
		{name: "scope without refresh_token gets none", scope: "api id",
			form: func(c string) url.Values { return codeForm(c, "") }},
		{name: "wrong verifier", scope: "api refresh_token", challenge: challengeOf(testVerifier),
			form: func(c string) url.Values { return codeForm(c, testVerifier+"x") }, wantError: "invalid_grant"},
		{name: "missing verifier", scope: "api refresh_token", challenge: challengeOf(testVerifier),
			form: func(c string) url.Values { return codeForm(c, "") }, wantError: "invalid_grant"},
		{name: "verifier without challenge", scope: "api refresh_token",
			form: func(c string) url.Values { return codeForm(c, testVerifier) }, wantError: "invalid_grant"},
		{name: "Salesforce rejects a verifier with a tilde", scope: "api refresh_token", challenge: challengeOf(tildeVerifier),
			form: func(c string) url.Values { return codeForm(c, tildeVerifier) }, wantError: "invalid_grant"},
		{name: "redirect_uri differs", scope: "api refresh_token",
			form: func(c string) url.Values {
				f := codeForm(c, "")
				f.Set("redirect_uri", "http://127.0.0.1:1/other")
				return f
			}, wantError: "redirect_uri_mismatch"},
		{name: "missing secret of a confidential client", scope: "api refresh_token",
			form: func(c string) url.Values {
				f := codeForm(c, "")
				f.Del("client_secret")
				return f
			}, wantError: "invalid_client"},
		{name: "unknown code", scope: "api refresh_token",
			form: func(string) url.Values { return codeForm("aPrxnot-a-code==", "") }, wantError: "invalid_grant"},
		{name: "expired code", scope: "api refresh_token",
			before: func(h *harness) { h.clock.Add(15 * time.Minute) },
			form:   func(c string) url.Values { return codeForm(c, "") }, wantError: "invalid_grant"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := setupProviderTest(t, Config{})
			code := h.authCode(tc.scope, tc.challenge)
			if tc.before != nil {
				tc.before(h)
			}
			res := h.post("/services/oauth2/token", tc.form(code))
			if tc.wantError != "" {
				assertOAuthError(t, res, http.StatusBadRequest, tc.wantError)
				if st := h.srv.Stats(); st.CodeExchanges != 0 {
					t.Errorf("CodeExchanges = %d after a failed exchange", st.CodeExchanges)
				}
				return
			}
			if res.status != http.StatusOK {
				t.Fatalf("status %d body %s", res.status, res.raw)
			}
			if got := h.apiStatus(res.str("access_token")); got != http.StatusOK {
				t.Errorf("API status %d with the new access token", got)
			}
			if !verifySignature(testSecret, res) {
				t.Error("signature does not verify")
			}
			rt, hasRefresh := res.obj["refresh_token"]
			if hasRefresh != tc.wantRefresh {
				t.Fatalf("refresh_token present = %v, want %v (scope %q)", hasRefresh, tc.wantRefresh, tc.scope)
			}
			if tc.wantRefresh {
				h.mustRefresh(rt.(string))
			}
			if st := h.srv.Stats(); st.CodeExchanges != 1 {
				t.Errorf("CodeExchanges = %d, want 1", st.CodeExchanges)
			}
		})
	}
}

func TestAuthorizationCodeSingleUse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		firstVerifier string
	}{
		{"after a successful exchange", testVerifier},
		{"after a failed verifier attempt", "wrong-verifier-wrong-verifier-wrong-verifier"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := setupProviderTest(t, Config{})
			code := h.authCode("api refresh_token", challengeOf(testVerifier))
			h.post("/services/oauth2/token", codeForm(code, tc.firstVerifier))
			res := h.post("/services/oauth2/token", codeForm(code, testVerifier))
			assertOAuthError(t, res, http.StatusBadRequest, "invalid_grant")
		})
	}
}

func TestAuthorizeErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		params func(p url.Values)
		// wantPage: a 400 page and no redirect; otherwise a redirect with
		// wantError.
		wantPage  bool
		wantError string
	}{
		{name: "unknown client", params: func(p url.Values) { p.Set("client_id", "nope") }, wantPage: true},
		{name: "unregistered redirect_uri", params: func(p url.Values) { p.Set("redirect_uri", "http://evil.example/cb") }, wantPage: true},
		{name: "missing redirect_uri", params: func(p url.Values) { p.Del("redirect_uri") }, wantPage: true},
		{name: "PKCE required but no challenge", params: func(p url.Values) {
			p.Set("client_id", "pkce-app")
			p.Del("code_challenge")
		}, wantError: "invalid_request"},
		{name: "plain challenge method", params: func(p url.Values) { p.Set("code_challenge_method", "plain") }, wantError: "invalid_request"},
		{name: "implicit flow", params: func(p url.Values) { p.Set("response_type", "token") }, wantError: "unsupported_response_type"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := setupProviderTest(t, Config{})
			h.srv.AddClient(Client{ID: "pkce-app", RedirectURIs: []string{testRedirect}, RequirePKCE: true})
			p := authorizeParams("api refresh_token", challengeOf(testVerifier))
			tc.params(p)
			res, u := h.authorize(p)
			if tc.wantPage {
				if res.status != http.StatusBadRequest || u != nil {
					t.Fatalf("status %d Location %v, want a 400 page without redirect", res.status, u)
				}
				return
			}
			if res.status != http.StatusFound || u == nil {
				t.Fatalf("status %d, want a redirect", res.status)
			}
			q := u.Query()
			if q.Get("error") != tc.wantError || q.Get("state") != "st&te=1" || q.Has("code") {
				t.Errorf("redirect query %v, want error=%s with state and no code", q, tc.wantError)
			}
		})
	}
}

func TestPKCERequiredClientSucceedsWithChallenge(t *testing.T) {
	t.Parallel()
	h := setupProviderTest(t, Config{})
	h.srv.AddClient(Client{ID: "pkce-app", RedirectURIs: []string{testRedirect}, RequirePKCE: true})
	p := authorizeParams("api refresh_token", challengeOf(testVerifier))
	p.Set("client_id", "pkce-app")
	_, u := h.authorize(p)
	if u == nil || u.Query().Get("code") == "" {
		t.Fatalf("no code issued: %v", u)
	}
	// A public client (no secret) authenticates by client_id and verifier.
	res := h.post("/services/oauth2/token", url.Values{
		"grant_type":    {"authorization_code"},
		"code":          {u.Query().Get("code")},
		"redirect_uri":  {testRedirect},
		"client_id":     {"pkce-app"},
		"code_verifier": {testVerifier},
	})
	if res.status != http.StatusOK || res.str("refresh_token") == "" {
		t.Fatalf("status %d body %s, want tokens", res.status, res.raw)
	}
}
