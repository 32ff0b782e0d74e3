package provider_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/provider"
)

func TestRefreshRequestWire(t *testing.T) {
	tests := []struct {
		name  string
		creds provider.ClientCredentials
		want  url.Values
	}{
		{"confidential client", testCreds, url.Values{
			"grant_type": {"refresh_token"}, "refresh_token": {testRefreshToken},
			"client_id": {testClientID}, "client_secret": {testClientSecret},
		}},
		{"public client sends no client_secret", provider.ClientCredentials{ClientID: testClientID}, url.Values{
			"grant_type": {"refresh_token"}, "refresh_token": {testRefreshToken}, "client_id": {testClientID},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, srv := startFake(t, jsonAnswer(200, map[string]string{"access_token": "a1"}))
			if _, err := provider.New(nil).Refresh(context.Background(), oauth2Endpoint(srv.URL), tt.creds, testRefreshToken); err != nil {
				t.Fatalf("Refresh: %v", err)
			}
			reqs := f.seen()
			if len(reqs) != 1 {
				t.Fatalf("server saw %d requests, want 1", len(reqs))
			}
			r := reqs[0]
			if r.method != http.MethodPost || r.path != "/token" {
				t.Errorf("request %s %s, want POST /token", r.method, r.path)
			}
			if ct := r.header.Get("Content-Type"); ct != "application/x-www-form-urlencoded" {
				t.Errorf("Content-Type = %q", ct)
			}
			if a := r.header.Get("Accept"); a != "application/json" {
				t.Errorf("Accept = %q", a)
			}
			if r.header.Get("Authorization") != "" {
				t.Errorf("Authorization header sent; credentials belong in the form")
			}
			if !formEqual(r.form, tt.want) {
				t.Errorf("form = %v, want %v", r.form, tt.want)
			}
		})
	}
}

func formEqual(a, b url.Values) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

// Refreshes against one provider share a connection instead of paying a
// handshake each; a server closing an idle one mid-request is an unknown
// outcome (TestRefreshTransportClassification), which the broker retries.
func TestRefreshesReuseConnections(t *testing.T) {
	srv, conns := connCountingServer(t, jsonAnswer(200, map[string]string{"access_token": "a1"}))
	c := provider.New(nil)
	for range 3 {
		if _, err := c.Refresh(context.Background(), oauth2Endpoint(srv.URL), testCreds, testRefreshToken); err != nil {
			t.Fatalf("Refresh: %v", err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("3 sequential refreshes used %d connections, want 1", n)
	}
}

// TestConcurrentRefreshesReuseConnections: rounds of refreshes in flight at
// once against one provider host keep their connections between rounds
// (Go's default keeps only two idle per host, so every round after the
// first would open fourteen new ones: a TCP and TLS handshake each).
func TestConcurrentRefreshesReuseConnections(t *testing.T) {
	const inFlight, rounds = 16, 4
	arrived := make(chan struct{}, inFlight)
	release := make(chan struct{})
	answer := jsonAnswer(200, map[string]string{"access_token": "a1"})
	srv, conns := connCountingServer(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		answer(w, r)
	})
	c := provider.New(nil)
	for range rounds {
		var wg sync.WaitGroup
		for range inFlight {
			wg.Go(func() {
				if _, err := c.Refresh(context.Background(), oauth2Endpoint(srv.URL), testCreds, testRefreshToken); err != nil {
					t.Errorf("Refresh: %v", err)
				}
			})
		}
		// All of the round in flight at once, so none can reuse another's
		// connection within the round.
		for range inFlight {
			<-arrived
		}
		for range inFlight {
			release <- struct{}{}
		}
		wg.Wait()
	}
	if n := conns.Load(); n != inFlight {
		t.Errorf("%d rounds of %d concurrent refreshes opened %d connections, want %d", rounds, inFlight, n, inFlight)
	}
}

// connCountingServer serves h and counts the connections opened to it.
func connCountingServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	conns := new(atomic.Int32)
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, conns
}

func TestConcurrentRefreshes(t *testing.T) {
	f, srv := startFake(t, func(w http.ResponseWriter, r *http.Request) {
		jsonAnswer(200, map[string]string{"access_token": "a-" + r.PostForm.Get("refresh_token")})(w, r)
	})
	c := provider.New(nil)
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			rt := "rt-" + string(rune('a'+i))
			tok, err := c.Refresh(context.Background(), oauth2Endpoint(srv.URL), testCreds, rt)
			if err == nil && tok.AccessToken != "a-"+rt {
				err = errors.New("answer crossed with another request: " + tok.AccessToken)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := len(f.seen()); got != n {
		t.Errorf("server saw %d requests, want %d", got, n)
	}
}

func TestExchangeCode(t *testing.T) {
	const (
		idURL    = "https://login.salesforce.com/id/00D/005"
		issuedAt = "1767225600000"
	)
	f, srv := startFake(t, jsonAnswer(200, map[string]string{
		"access_token": "a1", "refresh_token": "r1", "id": idURL, "issued_at": issuedAt,
		"instance_url": "https://acme.my.salesforce.com",
		"signature":    salesforceSignature(testClientSecret, idURL, issuedAt),
	}))
	ep := provider.SalesforceEndpoint(srv.URL)
	tok, err := provider.New(nil).ExchangeCode(context.Background(), ep, testCreds, testCode, "https://app.example/cb", testVerifier)
	if err != nil {
		t.Fatalf("ExchangeCode: %v", err)
	}
	if tok.RefreshToken != "r1" || tok.SignatureStatus != provider.SignatureValid || !tok.IssuedAt.Equal(time.UnixMilli(1767225600000)) {
		t.Errorf("token = %v, want refresh token r1, valid signature, issued_at from the response", tok)
	}
	want := url.Values{
		"grant_type": {"authorization_code"}, "code": {testCode}, "redirect_uri": {"https://app.example/cb"},
		"code_verifier": {testVerifier}, "client_id": {testClientID}, "client_secret": {testClientSecret},
	}
	reqs := f.seen()
	if len(reqs) != 1 || reqs[0].path != "/services/oauth2/token" || !formEqual(reqs[0].form, want) {
		t.Errorf("requests = %+v, want one POST to /services/oauth2/token with form %v", reqs, want)
	}

	t.Run("without PKCE sends no code_verifier", func(t *testing.T) {
		f, srv := startFake(t, jsonAnswer(200, map[string]string{"access_token": "a1"}))
		if _, err := provider.New(nil).ExchangeCode(context.Background(), oauth2Endpoint(srv.URL), testCreds, testCode, "https://app.example/cb", ""); err != nil {
			t.Fatalf("ExchangeCode: %v", err)
		}
		if reqs := f.seen(); len(reqs) != 1 || reqs[0].form.Has("code_verifier") {
			t.Errorf("requests = %+v, want one without code_verifier", reqs)
		}
	})
	t.Run("invalid_grant for a used code", func(t *testing.T) {
		_, srv := startFake(t, oauthError(400, "invalid_grant", "authorization code expired"))
		_, err := provider.New(nil).ExchangeCode(context.Background(), oauth2Endpoint(srv.URL), testCreds, testCode, "https://app.example/cb", testVerifier)
		pe := asProviderError(t, err)
		if pe.Op != "exchange" || !errors.Is(err, provider.ErrInvalidGrant) {
			t.Errorf("got %v (op %q), want an exchange invalid_grant", err, pe.Op)
		}
	})
}

func TestAuthCodeURL(t *testing.T) {
	c := provider.New(nil)
	ep := provider.SalesforceEndpoint("https://acme.my.salesforce.com")
	const challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"

	t.Run("all parameters", func(t *testing.T) {
		got, err := c.AuthCodeURL(ep, testCreds, "https://app.example/cb", "st-1", challenge, []string{"api", "refresh_token"})
		if err != nil {
			t.Fatalf("AuthCodeURL: %v", err)
		}
		u, err := url.Parse(got)
		if err != nil {
			t.Fatal(err)
		}
		if u.Scheme != "https" || u.Host != "acme.my.salesforce.com" || u.Path != "/services/oauth2/authorize" {
			t.Errorf("URL %q does not point at the authorize endpoint", got)
		}
		want := url.Values{
			"response_type": {"code"}, "client_id": {testClientID}, "redirect_uri": {"https://app.example/cb"},
			"state": {"st-1"}, "scope": {"api refresh_token"},
			"code_challenge": {challenge}, "code_challenge_method": {"S256"},
		}
		if !formEqual(u.Query(), want) {
			t.Errorf("query = %v, want %v", u.Query(), want)
		}
	})
	t.Run("existing query kept, no scope or PKCE when not given", func(t *testing.T) {
		ep := oauth2Endpoint("https://idp.example")
		ep.AuthorizeURL = "https://idp.example/authorize?audience=api&prompt=consent"
		got, err := c.AuthCodeURL(ep, testCreds, "https://app.example/cb", "st-1", "", nil)
		if err != nil {
			t.Fatalf("AuthCodeURL: %v", err)
		}
		u, _ := url.Parse(got)
		q := u.Query()
		if q.Get("audience") != "api" || q.Get("prompt") != "consent" || q.Has("scope") || q.Has("code_challenge") || q.Has("code_challenge_method") {
			t.Errorf("query = %v", q)
		}
	})
	invalid := []struct {
		name                       string
		ep                         provider.Endpoint
		creds                      provider.ClientCredentials
		redirect, state, challenge string
	}{
		{"no authorize URL", provider.Endpoint{Kind: provider.KindOAuth2}, testCreds, "https://app.example/cb", "s", ""},
		{"relative authorize URL", provider.Endpoint{Kind: provider.KindOAuth2, AuthorizeURL: "/authorize"}, testCreds, "https://app.example/cb", "s", ""},
		{"no client id", ep, provider.ClientCredentials{}, "https://app.example/cb", "s", ""},
		{"no redirect URI", ep, testCreds, "", "s", ""},
		{"no state", ep, testCreds, "https://app.example/cb", "", ""},
		{"challenge too short", ep, testCreds, "https://app.example/cb", "s", "abc"},
		{"challenge with bad characters", ep, testCreds, "https://app.example/cb", "s", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw+cM="},
	}
	for _, tt := range invalid {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.AuthCodeURL(tt.ep, tt.creds, tt.redirect, tt.state, tt.challenge, nil)
			if !errors.Is(err, provider.ErrInvalidArgument) {
				t.Errorf("err = %v, want ErrInvalidArgument", err)
			}
		})
	}
	t.Run("never carries the client secret", func(t *testing.T) {
		got, err := c.AuthCodeURL(ep, testCreds, "https://app.example/cb", "s", challenge, nil)
		if err != nil {
			t.Fatal(err)
		}
		u, _ := url.Parse(got)
		for k, v := range u.Query() {
			if slices.Contains(v, testClientSecret) {
				t.Errorf("parameter %s carries the client secret", k)
			}
		}
	})
}

func TestRevoke(t *testing.T) {
	tests := []struct {
		name    string
		answer  http.HandlerFunc
		wantErr bool
		outcome provider.Outcome
		code    string
	}{
		{name: "200 empty body", answer: rawAnswer(200, nil, "")},
		{name: "200 with a body", answer: rawAnswer(200, nil, "<html>ok</html>")},
		{name: "400 invalid_token", answer: oauthError(400, "invalid_token", "invalid token"), wantErr: true, outcome: provider.OutcomeRejected, code: "invalid_token"},
		{name: "400 unsupported_token_type", answer: oauthError(400, "unsupported_token_type", ""), wantErr: true, outcome: provider.OutcomeRejected, code: "unsupported_token_type"},
		{name: "503 empty", answer: rawAnswer(503, nil, ""), wantErr: true, outcome: provider.OutcomeNotProcessed},
		{name: "500", answer: rawAnswer(500, nil, "oops"), wantErr: true, outcome: provider.OutcomeUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, srv := startFake(t, tt.answer)
			err := provider.New(nil).Revoke(context.Background(), provider.SalesforceEndpoint(srv.URL), testCreds, testRefreshToken)
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("Revoke: %v", err)
				}
			} else {
				pe := asProviderError(t, err)
				if pe.Op != "revoke" || pe.Outcome != tt.outcome || pe.Code != tt.code {
					t.Errorf("got op %q outcome %v code %q, want revoke %v %q", pe.Op, pe.Outcome, pe.Code, tt.outcome, tt.code)
				}
			}
			want := url.Values{"token": {testRefreshToken}, "client_id": {testClientID}, "client_secret": {testClientSecret}}
			reqs := f.seen()
			if len(reqs) != 1 || reqs[0].path != "/services/oauth2/revoke" || !formEqual(reqs[0].form, want) {
				t.Errorf("requests = %+v, want one POST to /services/oauth2/revoke with %v", reqs, want)
			}
		})
	}
}

func TestIntrospect(t *testing.T) {
	tests := []struct {
		name    string
		answer  http.HandlerFunc
		want    provider.Introspection
		outcome provider.Outcome
		wantErr bool
	}{
		{name: "active with exp and scope", answer: jsonAnswer(200, map[string]any{"active": true, "exp": 1767225600, "scope": "api refresh_token", "client_id": testClientID}),
			want: provider.Introspection{Active: true, Expiry: time.Unix(1767225600, 0), Scopes: []string{"api", "refresh_token"}}},
		{name: "exp as string", answer: jsonAnswer(200, map[string]any{"active": true, "exp": "1767225600"}),
			want: provider.Introspection{Active: true, Expiry: time.Unix(1767225600, 0)}},
		{name: "inactive", answer: jsonAnswer(200, map[string]any{"active": false}), want: provider.Introspection{}},
		{name: "missing active", answer: jsonAnswer(200, map[string]any{"exp": 1}), wantErr: true, outcome: provider.OutcomeUnknown},
		{name: "not JSON", answer: rawAnswer(200, nil, "nope"), wantErr: true, outcome: provider.OutcomeUnknown},
		{name: "401 invalid_client", answer: oauthError(401, "invalid_client", ""), wantErr: true, outcome: provider.OutcomeRejected},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, srv := startFake(t, tt.answer)
			got, err := provider.New(nil).Introspect(context.Background(), provider.SalesforceEndpoint(srv.URL), testCreds, testAccessToken)
			if tt.wantErr {
				pe := asProviderError(t, err)
				if pe.Op != "introspect" || pe.Outcome != tt.outcome {
					t.Errorf("got %v (outcome %v), want an introspect error with outcome %v", err, pe.Outcome, tt.outcome)
				}
				return
			}
			if err != nil {
				t.Fatalf("Introspect: %v", err)
			}
			if got.Active != tt.want.Active || !got.Expiry.Equal(tt.want.Expiry) || !slices.Equal(got.Scopes, tt.want.Scopes) {
				t.Errorf("Introspect = %+v, want %+v", got, tt.want)
			}
			want := url.Values{"token": {testAccessToken}, "token_type_hint": {"access_token"}, "client_id": {testClientID}, "client_secret": {testClientSecret}}
			if reqs := f.seen(); len(reqs) != 1 || reqs[0].path != "/services/oauth2/introspect" || !formEqual(reqs[0].form, want) {
				t.Errorf("requests = %+v, want one POST to /services/oauth2/introspect with %v", reqs, want)
			}
		})
	}
}

// Bad arguments are refused before anything is sent, as not processed.
func TestInvalidArgumentsSendNothing(t *testing.T) {
	f, srv := startFake(t, jsonAnswer(200, map[string]any{"access_token": "a1", "active": true}))
	good := oauth2Endpoint(srv.URL)
	c := provider.New(nil)
	ctx := context.Background()
	tests := []struct {
		name string
		call func() error
	}{
		{"refresh: empty refresh token", func() error { _, err := c.Refresh(ctx, good, testCreds, ""); return err }},
		{"refresh: unspecified kind", func() error {
			ep := good
			ep.Kind = 0
			_, err := c.Refresh(ctx, ep, testCreds, testRefreshToken)
			return err
		}},
		{"refresh: no client id", func() error {
			_, err := c.Refresh(ctx, good, provider.ClientCredentials{ClientSecret: testClientSecret}, testRefreshToken)
			return err
		}},
		{"refresh: no token URL", func() error {
			_, err := c.Refresh(ctx, provider.Endpoint{Kind: provider.KindOAuth2}, testCreds, testRefreshToken)
			return err
		}},
		{"refresh: token URL not http(s)", func() error {
			ep := good
			ep.TokenURL = "ftp://idp.example/token"
			_, err := c.Refresh(ctx, ep, testCreds, testRefreshToken)
			return err
		}},
		{"exchange: empty code", func() error {
			_, err := c.ExchangeCode(ctx, good, testCreds, "", "https://app.example/cb", "")
			return err
		}},
		{"exchange: empty redirect URI", func() error { _, err := c.ExchangeCode(ctx, good, testCreds, testCode, "", ""); return err }},
		{"revoke: empty token", func() error { return c.Revoke(ctx, good, testCreds, "") }},
		{"revoke: no revocation URL", func() error {
			return c.Revoke(ctx, provider.Endpoint{Kind: provider.KindOAuth2, TokenURL: good.TokenURL}, testCreds, testRefreshToken)
		}},
		{"introspect: empty token", func() error { _, err := c.Introspect(ctx, good, testCreds, ""); return err }},
		{"introspect: no introspection URL", func() error {
			_, err := c.Introspect(ctx, provider.Endpoint{Kind: provider.KindOAuth2}, testCreds, testAccessToken)
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if !errors.Is(err, provider.ErrInvalidArgument) {
				t.Fatalf("err = %v, want ErrInvalidArgument", err)
			}
			if pe := asProviderError(t, err); pe.Outcome != provider.OutcomeNotProcessed || pe.Permanent() {
				t.Errorf("outcome %v permanent %v, want not processed, not permanent", pe.Outcome, pe.Permanent())
			}
		})
	}
	if n := len(f.seen()); n != 0 {
		t.Errorf("server saw %d requests, want 0", n)
	}
}
