package providersim

import (
	"errors"
	"net/http"
	"net/url"
	"testing"
	"time"
)

func TestRevoke(t *testing.T) {
	t.Parallel()
	t.Run("access token alone", func(t *testing.T) {
		t.Parallel()
		h := setupProviderTest(t, Config{})
		a1, r2 := h.mustRefresh(h.login())
		a2, r3 := h.mustRefresh(r2)
		res := h.post("/services/oauth2/revoke", url.Values{"token": {a1}})
		if res.status != http.StatusOK || len(res.raw) != 0 {
			t.Fatalf("status %d body %q, want 200 empty", res.status, res.raw)
		}
		if got := h.apiStatus(a1); got != http.StatusUnauthorized {
			t.Errorf("revoked access token: API %d, want 401", got)
		}
		if got := h.apiStatus(a2); got != http.StatusOK {
			t.Errorf("sibling access token: API %d, want 200", got)
		}
		h.mustRefresh(r3)
		assertOAuthError(t, h.post("/services/oauth2/revoke", url.Values{"token": {a1}}), http.StatusBadRequest, "invalid_token")
	})
	t.Run("refresh token revokes the family", func(t *testing.T) {
		t.Parallel()
		h := setupProviderTest(t, Config{})
		a1, r2 := h.mustRefresh(h.login())
		res := h.post("/services/oauth2/revoke", url.Values{"token": {r2}})
		if res.status != http.StatusOK {
			t.Fatalf("status %d body %s", res.status, res.raw)
		}
		if got := h.apiStatus(a1); got != http.StatusUnauthorized {
			t.Errorf("access token of revoked family: API %d, want 401", got)
		}
		assertInvalidGrant(t, h.refresh(r2))
		assertOAuthError(t, h.post("/services/oauth2/revoke", url.Values{"token": {r2}}), http.StatusBadRequest, "invalid_token")
		if st := h.srv.Stats(); st.Revocations != 1 || st.FamiliesRevoked != 1 || st.ReuseDetections != 0 {
			t.Errorf("stats = %+v", st)
		}
	})
	t.Run("unknown token", func(t *testing.T) {
		t.Parallel()
		h := setupProviderTest(t, Config{})
		for _, tok := range []string{"5Aep861unknown", ""} {
			assertOAuthError(t, h.post("/services/oauth2/revoke", url.Values{"token": {tok}}), http.StatusBadRequest, "invalid_token")
		}
	})
}

func TestIntrospect(t *testing.T) {
	t.Parallel()
	introspect := func(h *harness, token, clientID, secret string) result {
		h.t.Helper()
		return h.post("/services/oauth2/introspect", url.Values{
			"token": {token}, "token_type_hint": {"access_token"},
			"client_id": {clientID}, "client_secret": {secret},
		})
	}
	h := setupProviderTest(t, Config{SessionTimeout: 15 * time.Minute})
	h.srv.AddClient(Client{ID: "other-app", Secret: "other-secret"})
	old := h.login()
	access, current := h.mustRefresh(old)
	issued := h.clock.Now().Unix()

	res := introspect(h, access, testClientID, testSecret)
	if res.status != http.StatusOK || res.obj["active"] != true || res.str("token_type") != "access_token" ||
		res.str("client_id") != testClientID || res.str("scope") != "api refresh_token" || res.str("username") == "" {
		t.Fatalf("live access token: %d %s", res.status, res.raw)
	}
	if exp, iat := res.obj["exp"].(float64), res.obj["iat"].(float64); int64(iat) != issued || int64(exp) != issued+15*60 {
		t.Errorf("iat %v exp %v, want %d and iat + session timeout", iat, exp, issued)
	}

	res = introspect(h, current, testClientID, testSecret)
	if res.obj["active"] != true || res.str("token_type") != "refresh_token" {
		t.Errorf("current refresh token: %s", res.raw)
	}
	if _, ok := res.obj["exp"]; ok {
		t.Errorf("refresh token introspection carries exp: %s", res.raw)
	}

	inactive := []struct{ name, token, client, secret string }{
		{"superseded refresh token", old, testClientID, testSecret},
		{"another app's token", access, "other-app", "other-secret"},
		{"unknown token", "00Dxx0000001gER!nope", testClientID, testSecret},
	}
	for _, tc := range inactive {
		if res := introspect(h, tc.token, tc.client, tc.secret); res.status != http.StatusOK || string(res.raw) != `{"active":false}` {
			t.Errorf("%s: %d %s, want 200 {\"active\":false}", tc.name, res.status, res.raw)
		}
	}

	if res := introspect(h, access, testClientID, "wrong"); res.status != http.StatusUnauthorized {
		t.Errorf("wrong secret: status %d, want 401", res.status)
	}

	// Past the session timeout the access token is dead everywhere.
	h.clock.Add(15 * time.Minute)
	if res := introspect(h, access, testClientID, testSecret); res.obj["active"] != false {
		t.Errorf("expired access token: %s", res.raw)
	}
	if h.srv.AccessTokenActive(access) || h.apiStatus(access) != http.StatusUnauthorized {
		t.Error("expired access token still accepted")
	}
	if st := h.srv.Stats(); st.Introspections != 7 {
		t.Errorf("Introspections = %d, want 7", st.Introspections)
	}
}

func TestRevokeFamilyOf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		pick func(access, refresh string) string
	}{
		{"by refresh token", func(_, r string) string { return r }},
		{"by access token", func(a, _ string) string { return a }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := setupProviderTest(t, Config{})
			access, refresh := h.mustRefresh(h.login())
			if !h.srv.AccessTokenActive(access) {
				t.Fatal("fresh access token inactive")
			}
			if !h.srv.RevokeFamilyOf(tc.pick(access, refresh)) {
				t.Fatal("RevokeFamilyOf = false for a live family")
			}
			if h.srv.RevokeFamilyOf(tc.pick(access, refresh)) {
				t.Error("RevokeFamilyOf = true for an already revoked family")
			}
			if h.srv.AccessTokenActive(access) || h.apiStatus(access) != http.StatusUnauthorized {
				t.Error("access token survived family revocation")
			}
			assertInvalidGrant(t, h.refresh(refresh))
		})
	}
	h := setupProviderTest(t, Config{})
	if h.srv.RevokeFamilyOf("5Aep861unknown") {
		t.Error("RevokeFamilyOf = true for an unknown token")
	}
}

func TestIssueRefreshTokenErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		client string
		scopes []string
		want   error
	}{
		{"unknown client", "nope", nil, ErrUnknownClient},
		{"scopes without refresh", testClientID, []string{"api", "web"}, ErrNoRefreshScope},
		{"default scopes", testClientID, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := setupProviderTest(t, Config{})
			rt, err := h.srv.IssueRefreshToken(tc.client, tc.scopes)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if tc.want == nil {
				h.mustRefresh(rt)
			}
		})
	}
}

func TestStartRejectsNegativeDurations(t *testing.T) {
	t.Parallel()
	for _, cfg := range []Config{{ReuseGrace: -time.Second}, {SessionTimeout: -time.Second}} {
		if s, err := Start(cfg); err == nil {
			_ = s.Close()
			t.Errorf("Start(%+v) succeeded", cfg)
		}
	}
}
