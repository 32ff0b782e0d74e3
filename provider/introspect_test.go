package provider_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/fositeserver"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/providersim"
)

// What IntrospectToken sends: the token and its hint, with the client's
// credentials as form fields for Salesforce and as HTTP Basic (form-encoded
// first, RFC 6749 §2.3.1) for generic providers.
func TestIntrospectTokenWire(t *testing.T) {
	// A secret with characters Basic authentication must form-encode.
	odd := provider.ClientCredentials{ClientID: "client id:1", ClientSecret: "cs-5ecret:+/=&%-0001"}
	tests := []struct {
		name      string
		kind      provider.Kind
		creds     provider.ClientCredentials
		hint      provider.TokenTypeHint
		wantForm  url.Values
		wantBasic bool
	}{
		{"salesforce, refresh token: credentials in the form", provider.KindSalesforce, testCreds, provider.HintRefreshToken,
			url.Values{"token": {testRefreshToken}, "token_type_hint": {"refresh_token"}, "client_id": {testClientID}, "client_secret": {testClientSecret}}, false},
		{"generic, refresh token: HTTP Basic", provider.KindOAuth2, odd, provider.HintRefreshToken,
			url.Values{"token": {testRefreshToken}, "token_type_hint": {"refresh_token"}}, true},
		{"generic, access token: HTTP Basic", provider.KindOAuth2, odd, provider.HintAccessToken,
			url.Values{"token": {testRefreshToken}, "token_type_hint": {"access_token"}}, true},
		{"generic public client: client_id in the form", provider.KindOAuth2, provider.ClientCredentials{ClientID: testClientID}, provider.HintRefreshToken,
			url.Values{"token": {testRefreshToken}, "token_type_hint": {"refresh_token"}, "client_id": {testClientID}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, srv := startFake(t, jsonAnswer(200, map[string]any{"active": true}))
			ep := provider.Endpoint{Kind: tt.kind, IntrospectionURL: srv.URL + "/introspect"}
			in, err := provider.New(nil).IntrospectToken(context.Background(), ep, tt.creds, testRefreshToken, tt.hint)
			if err != nil || !in.Active {
				t.Fatalf("IntrospectToken = %+v, %v", in, err)
			}
			reqs := f.seen()
			if len(reqs) != 1 {
				t.Fatalf("server saw %d requests, want 1", len(reqs))
			}
			r := reqs[0]
			if !formEqual(r.form, tt.wantForm) {
				t.Errorf("form = %v, want %v", r.form, tt.wantForm)
			}
			req := &http.Request{Header: r.header}
			user, pass, ok := req.BasicAuth()
			if ok != tt.wantBasic {
				t.Fatalf("Basic authentication sent: %v, want %v", ok, tt.wantBasic)
			}
			if ok {
				id, _ := url.QueryUnescape(user)
				secret, _ := url.QueryUnescape(pass)
				if id != tt.creds.ClientID || secret != tt.creds.ClientSecret {
					t.Errorf("Basic credentials decode to %q / (a %d-byte secret), want the client's", id, len(secret))
				}
			}
		})
	}
}

// Refused arguments send nothing; errors never carry the token or secret,
// even when the provider echoes them.
func TestIntrospectTokenErrors(t *testing.T) {
	f, srv := startFake(t, jsonAnswer(400, map[string]any{"error": "invalid_request", "error_description": "unknown token " + testRefreshToken + " for " + testClientSecret}))
	c := provider.New(nil)
	ep := provider.Endpoint{Kind: provider.KindOAuth2, IntrospectionURL: srv.URL + "/introspect"}
	for _, hint := range []provider.TokenTypeHint{"", "id_token"} {
		if _, err := c.IntrospectToken(context.Background(), ep, testCreds, testRefreshToken, hint); !errors.Is(err, provider.ErrInvalidArgument) {
			t.Errorf("hint %q: %v, want ErrInvalidArgument", hint, err)
		}
	}
	if n := len(f.seen()); n != 0 {
		t.Fatalf("server saw %d requests for refused arguments", n)
	}
	_, err := c.IntrospectToken(context.Background(), ep, testCreds, testRefreshToken, provider.HintRefreshToken)
	pe := asProviderError(t, err)
	if pe.Op != "introspect" || pe.Outcome != provider.OutcomeRejected {
		t.Errorf("got %v (outcome %v), want a rejected introspect error", err, pe.Outcome)
	}
	for _, s := range testSecrets {
		if strings.Contains(err.Error(), s) {
			t.Errorf("error %q holds a secret", err)
		}
	}
}

// Against the Salesforce simulator: a refresh token is active while it is
// the family's current one, inactive once rotated away or once its family is
// revoked, and asking never rotates it. Within a reuse grace window the
// superseded token is active, as the token endpoint would accept it.
func TestSimIntrospectRefreshToken(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(time.Now())
	sim, ep, cc := setupSimTest(t, providersim.Config{ReuseGrace: time.Minute, Now: clk.Now})
	c := provider.New(nil)
	active := func(token string) bool {
		t.Helper()
		in, err := c.IntrospectToken(ctx, ep, cc, token, provider.HintRefreshToken)
		if err != nil {
			t.Fatalf("IntrospectToken: %v", err)
		}
		return in.Active
	}
	rt0 := issue(t, sim, cc)
	for range 3 {
		if !active(rt0) {
			t.Fatal("a current refresh token is inactive")
		}
	}
	if s := sim.Stats(); s.RefreshRequests != 0 || s.Rotations != 0 {
		t.Fatalf("introspection changed the family: %+v", s)
	}
	tok, err := c.Refresh(ctx, ep, cc, rt0)
	if err != nil {
		t.Fatal(err)
	}
	if !active(tok.RefreshToken) || !active(rt0) {
		t.Fatal("within the grace window both the new and the superseded token are usable, so active")
	}
	clk.Add(time.Minute)
	if active(rt0) {
		t.Error("past the grace window the superseded token is active")
	}
	sim.RevokeFamilyOf(tok.RefreshToken)
	if active(tok.RefreshToken) {
		t.Error("the current token of a revoked family is active")
	}
	if s := sim.Stats(); s.RefreshRequests != 1 || s.ReuseDetections != 0 {
		t.Errorf("stats %+v: want the one refresh, no reuse", s)
	}
}

// Against ory/fosite, whose introspection endpoint takes only HTTP Basic
// client authentication.
func TestFositeIntrospectRefreshToken(t *testing.T) {
	ctx := context.Background()
	fs, err := fositeserver.Start(fositeserver.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fs.Close() })
	const redirect = "http://127.0.0.1:1/callback"
	cc := provider.ClientCredentials{ClientID: "rotavault", ClientSecret: "fosite-secret+/=:%"}
	fs.AddClient(cc.ClientID, cc.ClientSecret, []string{redirect})
	ep := provider.Endpoint{Kind: provider.KindOAuth2, TokenURL: fs.TokenURL(), IntrospectionURL: fs.IntrospectionURL()}
	rt0, err := fs.IssueRefreshToken(ctx, cc.ClientID, cc.ClientSecret, redirect, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := provider.New(nil)
	active := func(token string) bool {
		t.Helper()
		in, err := c.IntrospectToken(ctx, ep, cc, token, provider.HintRefreshToken)
		if err != nil {
			t.Fatalf("IntrospectToken: %v", err)
		}
		return in.Active
	}
	if !active(rt0) {
		t.Fatal("the issued refresh token is inactive")
	}
	tok, err := c.Refresh(ctx, ep, cc, rt0)
	if err != nil {
		t.Fatal(err)
	}
	if active(rt0) || !active(tok.RefreshToken) {
		t.Fatal("after rotation the old token must be inactive, the new one active")
	}
	if active("not-a-token") {
		t.Error("an unknown token is active")
	}
	if s := fs.Stats(); s.RefreshRequests != 1 || s.InvalidGrants != 0 || fs.Introspections() != 4 {
		t.Errorf("fosite saw %+v and %d introspections; want one refresh, four introspections", s, fs.Introspections())
	}
	// Wrong credentials are an error, never an answer.
	bad := provider.ClientCredentials{ClientID: cc.ClientID, ClientSecret: "wrong"}
	if _, err := c.IntrospectToken(ctx, ep, bad, tok.RefreshToken, provider.HintRefreshToken); asProviderError(t, err).Outcome != provider.OutcomeRejected {
		t.Errorf("wrong secret: %v, want a rejection", err)
	}
}
