package client_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/rotavault/rotavault/client"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// resourceServer stands for an API on 127.0.0.1 that checks bearer
// tokens, by default as Salesforce does: the token must be live at the
// provider (the simulator).
type resourceServer struct {
	*httptest.Server
	mu       sync.Mutex
	attempts []attempt
	// rejectAll refuses every token.
	rejectAll bool
}

type attempt struct {
	token, body string
	status      int
}

func newResourceServer(t *testing.T, e *env, rejectAll bool) *resourceServer {
	rs := &resourceServer{rejectAll: rejectAll}
	rs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		code := http.StatusOK
		if !ok || rejectAll || !e.sim.AccessTokenActive(token) {
			code = http.StatusUnauthorized
		}
		rs.mu.Lock()
		rs.attempts = append(rs.attempts, attempt{token: token, body: string(body), status: code})
		rs.mu.Unlock()
		w.WriteHeader(code)
	}))
	t.Cleanup(rs.Close)
	return rs
}

func (rs *resourceServer) seen() []attempt {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return append([]attempt(nil), rs.attempts...)
}

// revokeAccessToken revokes one access token at the provider (its family
// stays live), as a Salesforce admin ending a session does: the resource
// server refuses it, the provider's introspection says it is inactive, and
// the refresh token still works.
func revokeAccessToken(t *testing.T, e *env, tok client.Token) {
	t.Helper()
	resp, err := http.PostForm(e.sim.URL()+"/services/oauth2/revoke", url.Values{"token": {tok.AccessToken}})
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || e.sim.AccessTokenActive(tok.AccessToken) {
		t.Fatalf("revoking the access token at the simulator: %s", resp.Status)
	}
}

func TestTokenSourceWithOAuth2Client(t *testing.T) {
	e := newEnv(t)
	if err := e.install(ctxT(t), "acme"); err != nil {
		t.Fatal(err)
	}
	rs := newResourceServer(t, e, false)
	seenNotices, onNotice := newNotices()
	c := e.watchingClient(t, onNotice)
	ctx := ctxT(t)

	resp, err := oauth2.NewClient(ctx, c.TokenSource(ctx, "acme")).Get(rs.URL + "/services/data/v62.0/")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	tok := mustToken(t, c, "acme")
	if seen := rs.seen(); resp.StatusCode != http.StatusOK || len(seen) != 1 || seen[0].token != tok.AccessToken {
		t.Fatalf("through oauth2.NewClient: %s, resource server saw %d requests", resp.Status, len(seen))
	}

	ot, err := c.TokenSource(ctx, "acme").Token()
	if err != nil {
		t.Fatal(err)
	}
	// x/oauth2 stops reusing a token 10s before Expiry: it must ask again
	// when the Client's one-minute margin begins.
	if ot.AccessToken != tok.AccessToken || ot.Type() != "Bearer" || !ot.Expiry.Equal(tok.Expiry.Add(-time.Minute+10*time.Second)) ||
		ot.Extra("instance_url") != e.sim.URL() || ot.RefreshToken != "" {
		t.Fatalf("oauth2 token: type %q, expiry %s (token's %s), instance_url %v", ot.Type(), ot.Expiry, tok.Expiry, ot.Extra("instance_url"))
	}

	if err := e.revoke(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	seenNotices.await(t, "acme", rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_REVOKED)
	_, err = oauth2.NewClient(ctx, c.TokenSource(ctx, "acme")).Get(rs.URL + "/services/data/v62.0/")
	var reauth *client.ReauthenticationRequiredError
	if !errors.As(err, &reauth) || reauth.CredentialID != "acme" {
		t.Fatalf("after revocation: %v, want *ReauthenticationRequiredError through the http.Client", err)
	}
}

// A margin shorter than x/oauth2's own 10s delta: Expiry is the token's.
func TestTokenSourceExpiryNeverLater(t *testing.T) {
	e := newEnv(t)
	if err := e.install(ctxT(t), "acme"); err != nil {
		t.Fatal(err)
	}
	c := e.newClient(t, client.WithRefreshMargin(time.Second))
	ot, err := c.TokenSource(ctxT(t), "acme").Token()
	if err != nil {
		t.Fatal(err)
	}
	if tok := mustToken(t, c, "acme"); !ot.Expiry.Equal(tok.Expiry) {
		t.Fatalf("oauth2 expiry %s, token expiry %s", ot.Expiry, tok.Expiry)
	}
}

func TestTransport(t *testing.T) {
	type request struct {
		body       string
		replayable bool
		wantStatus int
		// wantAttempts is how many times the resource server saw it.
		wantAttempts int
		// wantReauth: the http.Client returns ErrReauthenticationRequired.
		wantReauth bool
	}
	for _, tc := range []struct {
		name      string
		rejectAll bool
		// before runs after the Client cached its first token.
		before   func(t *testing.T, e *env, first client.Token)
		requests []request
		// wantCalls is the GetAccessToken calls the server saw in all.
		wantCalls int64
	}{
		{
			name:   "401 then one retry with the newer token",
			before: func(t *testing.T, e *env, first client.Token) { revokeAccessToken(t, e, first) },
			requests: []request{
				{body: "payload", replayable: true, wantStatus: http.StatusOK, wantAttempts: 2},
				// The newer token is cached: no 401, no server call.
				{body: "again", replayable: true, wantStatus: http.StatusOK, wantAttempts: 1},
			},
			wantCalls: 2,
		},
		{
			name:      "a resource server refusing every token gets at most one retry",
			rejectAll: true,
			before:    func(t *testing.T, e *env, first client.Token) { revokeAccessToken(t, e, first) },
			requests: []request{
				{body: "payload", replayable: true, wantStatus: http.StatusUnauthorized, wantAttempts: 2},
				// The newer token is refused too; its report gets no newer
				// one (rate-limited or vouched for): no retry at all.
				{body: "again", replayable: true, wantStatus: http.StatusUnauthorized, wantAttempts: 1},
			},
			wantCalls: 3,
		},
		{
			name:   "a body that cannot be replayed is not sent twice",
			before: func(t *testing.T, e *env, first client.Token) { revokeAccessToken(t, e, first) },
			requests: []request{
				{body: "stream", replayable: false, wantStatus: http.StatusUnauthorized, wantAttempts: 1},
				// The report still got a newer token for the next request.
				{body: "next", replayable: true, wantStatus: http.StatusOK, wantAttempts: 1},
			},
			wantCalls: 2,
		},
		{
			name: "the provider still vouches for the token: no retry",
			// The resource server refuses a token the provider says is live:
			// the server does not refresh for that.
			rejectAll: true,
			before:    func(*testing.T, *env, client.Token) {},
			requests:  []request{{body: "payload", replayable: true, wantStatus: http.StatusUnauthorized, wantAttempts: 1}},
			wantCalls: 2,
		},
		{
			name: "the family is revoked: a typed error",
			before: func(t *testing.T, e *env, first client.Token) {
				if !e.sim.RevokeFamilyOf(first.AccessToken) {
					t.Fatal("simulator did not revoke")
				}
			},
			requests:  []request{{body: "payload", replayable: true, wantAttempts: 1, wantReauth: true}},
			wantCalls: 2,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			if err := e.install(ctxT(t), "acme"); err != nil {
				t.Fatal(err)
			}
			rs := newResourceServer(t, e, tc.rejectAll)
			c := e.watchingClient(t)
			first := mustToken(t, c, "acme")
			tc.before(t, e, first)
			hc := &http.Client{Transport: &client.Transport{Client: c, CredentialID: "acme"}}

			for i, r := range tc.requests {
				before := len(rs.seen())
				var body io.Reader = strings.NewReader(r.body)
				if !r.replayable {
					body = io.NopCloser(body) // http.NewRequest cannot set GetBody
				}
				req, err := http.NewRequestWithContext(ctxT(t), http.MethodPost, rs.URL+"/services/data/v62.0/sobjects/Account", body)
				if err != nil {
					t.Fatal(err)
				}
				resp, err := hc.Do(req)
				seen := rs.seen()[before:]
				if r.wantReauth {
					if !errors.Is(err, client.ErrReauthenticationRequired) {
						t.Fatalf("request %d: %v, want ErrReauthenticationRequired", i, err)
					}
				} else {
					if err != nil {
						t.Fatalf("request %d: %v", i, err)
					}
					_ = resp.Body.Close()
					if resp.StatusCode != r.wantStatus {
						t.Fatalf("request %d: %s, want %d", i, resp.Status, r.wantStatus)
					}
				}
				if len(seen) != r.wantAttempts {
					t.Fatalf("request %d reached the resource server %d times, want %d", i, len(seen), r.wantAttempts)
				}
				for j, a := range seen {
					if a.body != r.body {
						t.Fatalf("request %d attempt %d carried body %q, want %q", i, j, a.body, r.body)
					}
					if j > 0 && a.token == seen[j-1].token {
						t.Fatalf("request %d was retried with the token that was refused", i)
					}
				}
			}
			if seen := rs.seen(); seen[0].token != first.AccessToken {
				t.Fatal("the first request did not carry the cached token")
			}
			if got := e.calls.Load(); got != tc.wantCalls {
				t.Fatalf("server saw %d GetAccessToken calls, want %d", got, tc.wantCalls)
			}
		})
	}
}

// Transport presents the token only to the first request's origin: a
// redirect to another host, to a subdomain, to another port or from https
// to http on the same host and port gets no Authorization header.
func TestTransportRedirectsKeepTheTokenToOneOrigin(t *testing.T) {
	e := newEnv(t)
	if err := e.install(ctxT(t), "acme"); err != nil {
		t.Fatal(err)
	}
	c := e.watchingClient(t)
	tok := mustToken(t, c, "acme")

	var (
		mu     sync.Mutex
		landed []string // the Authorization header of each request to /landed
	)
	// One handler behind a plaintext and a TLS listener; every name below
	// (example.com, its subdomain, any port) dials one of the two, chosen
	// by scheme, so only the URL's origin tells the hops apart.
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/same":
			http.Redirect(w, r, "/landed", http.StatusFound)
		case "/away":
			http.Redirect(w, r, "http://elsewhere.test/landed", http.StatusFound)
		case "/away-and-back":
			http.Redirect(w, r, "http://elsewhere.test/back", http.StatusFound)
		case "/back":
			http.Redirect(w, r, "http://example.com/landed", http.StatusFound)
		case "/subdomain":
			http.Redirect(w, r, "http://api.example.com/landed", http.StatusFound)
		case "/other-port":
			http.Redirect(w, r, "http://example.com:8080/landed", http.StatusFound)
		case "/downgrade":
			// Same host and port, scheme alone differs.
			http.Redirect(w, r, "http://example.com:443/landed", http.StatusFound)
		case "/landed":
			mu.Lock()
			landed = append(landed, r.Header.Get("Authorization"))
			mu.Unlock()
		}
	})
	plain := httptest.NewServer(handler)
	t.Cleanup(plain.Close)
	secure := httptest.NewTLSServer(handler) // its certificate names example.com
	t.Cleanup(secure.Close)
	tlsConf := secure.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	tlsConf.ServerName = "example.com"
	base := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, plain.Listener.Addr().String())
		},
		DialTLSContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&tls.Dialer{Config: tlsConf}).DialContext(ctx, network, secure.Listener.Addr().String())
		},
	}
	t.Cleanup(base.CloseIdleConnections)
	hc := &http.Client{Transport: &client.Transport{Client: c, CredentialID: "acme", Base: base}}

	for _, tc := range []struct {
		url  string
		want string
	}{
		{url: "http://example.com/same", want: tok.AuthorizationHeader()},
		{url: "https://example.com/same", want: tok.AuthorizationHeader()},
		{url: "http://example.com/away", want: ""},
		{url: "http://example.com/away-and-back", want: ""},
		{url: "http://example.com/subdomain", want: ""},
		{url: "http://example.com/other-port", want: ""},
		{url: "https://example.com/downgrade", want: ""},
	} {
		resp, err := hc.Get(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		mu.Lock()
		got := landed[len(landed)-1]
		mu.Unlock()
		if got != tc.want {
			t.Errorf("%s: the redirect's target saw Authorization %q, want %q", tc.url, fingerprintOf(got), fingerprintOf(tc.want))
		}
	}
}

// fingerprintOf names an Authorization header without printing its token.
func fingerprintOf(header string) string {
	if header == "" {
		return ""
	}
	return fmt.Sprintf("%d-byte header", len(header))
}

// x/oauth2 must ask again as soon as the token has less than the
// WithMinRemaining the source was made with, as the Client would.
func TestTokenSourceExpiryHonoursMinRemaining(t *testing.T) {
	e := newEnv(t)
	if err := e.install(ctxT(t), "acme"); err != nil {
		t.Fatal(err)
	}
	c := e.watchingClient(t)
	ot, err := c.TokenSource(ctxT(t), "acme", client.WithMinRemaining(5*time.Minute)).Token()
	if err != nil {
		t.Fatal(err)
	}
	tok := mustToken(t, c, "acme")
	if want := tok.Expiry.Add(-5*time.Minute + 10*time.Second); !ot.Expiry.Equal(want) {
		t.Fatalf("oauth2 expiry %s, want %s (the token's %s less 5m, plus x/oauth2's 10s)", ot.Expiry, want, tok.Expiry)
	}
}
