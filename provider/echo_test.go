package provider_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/providersim"
)

// Secrets with every character the encodings treat specially: '/', '+',
// space, '=', '&', '%' (also followed by hex digits), quotes, HTML
// characters and non-ASCII.
const (
	echoClientID     = "3MVG9 echo&client"
	echoClientSecret = `cs/echo+secret= &"<é>100%`
	echoRefreshToken = `RT/refresh+token é&"<x>%2F=`
	echoCode         = "code/echo+1 é"
	echoVerifier     = "verifier-echo-0123456789abcdefghijklmnopqrstuvwxyz~"
	echoDeviceCode   = "DEV/echo+code=é"
	echoAccessToken  = "AT/echo+access=é"
)

// A provider that echoes a refused request back, in any encoding, must not
// get the secrets of that request into the error: its text goes to logs,
// last_error and, on invalid_grant, the audit trail.
func TestEchoedSecretsAreRedactedFromErrors(t *testing.T) {
	sim, err := providersim.Start(providersim.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	sim.AddClient(providersim.Client{ID: echoClientID, Secret: echoClientSecret, RedirectURIs: []string{"http://127.0.0.1:1/cb"}})
	sfEP := provider.SalesforceEndpoint(sim.URL())
	genericEP := sfEP
	genericEP.Kind = provider.KindOAuth2
	genericEP.DeviceAuthorizationURL = sim.URL() + providersim.DeviceAuthorizationPath
	post := provider.ClientCredentials{ClientID: echoClientID, ClientSecret: echoClientSecret}
	basic := post
	basic.AuthMethod = provider.AuthSecretBasic
	wrongSecret := post
	wrongSecret.ClientSecret = echoClientSecret + "/wrong"

	c := provider.New(nil)
	ctx := context.Background()
	calls := []struct {
		name    string
		secrets []string
		secret  string // the client secret sent
		call    func() error
	}{
		{"refresh, secret posted", []string{echoRefreshToken}, echoClientSecret, func() error {
			_, err := c.Refresh(ctx, sfEP, post, echoRefreshToken)
			return err
		}},
		{"refresh, HTTP Basic", []string{echoRefreshToken}, echoClientSecret, func() error {
			_, err := c.Refresh(ctx, genericEP, basic, echoRefreshToken)
			return err
		}},
		{"code exchange", []string{echoCode, echoVerifier}, echoClientSecret, func() error {
			_, err := c.ExchangeCode(ctx, sfEP, post, echoCode, "http://127.0.0.1:1/cb", echoVerifier)
			return err
		}},
		{"revoke", []string{echoRefreshToken}, echoClientSecret, func() error {
			return c.Revoke(ctx, sfEP, post, echoRefreshToken)
		}},
		{"introspect with a refused secret", []string{echoAccessToken}, wrongSecret.ClientSecret, func() error {
			_, err := c.Introspect(ctx, genericEP, wrongSecret, echoAccessToken)
			return err
		}},
		{"device poll", []string{echoDeviceCode}, echoClientSecret, func() error {
			_, err := c.PollDeviceToken(ctx, genericEP, post, echoDeviceCode)
			return err
		}},
		{"device start with a refused secret", nil, wrongSecret.ClientSecret, func() error {
			_, err := c.StartDeviceAuthorization(ctx, genericEP, wrongSecret, nil)
			return err
		}},
	}
	for _, echo := range providersim.Echoes() {
		t.Run(echo.String(), func(t *testing.T) {
			sim.EchoRequests(echo)
			for _, tc := range calls {
				spellings := providersim.EchoSpellings(echoClientID, tc.secret, tc.secrets...)
				err := tc.call()
				var pe *provider.Error
				if !errors.As(err, &pe) || pe.Outcome != provider.OutcomeRejected {
					t.Fatalf("%s: got %v, want a refusal", tc.name, err)
				}
				msg := err.Error()
				for _, s := range spellings {
					if strings.Contains(msg, s) {
						t.Errorf("%s: error %q holds the secret spelled %q", tc.name, msg, s)
					}
				}
				if !strings.Contains(msg, "[REDACTED]") || !strings.Contains(msg, "you sent") {
					t.Errorf("%s: error %q, want the echo with its secrets redacted", tc.name, msg)
				}
			}
		})
	}
	sim.EchoRequests(providersim.EchoNone)

	// The check above proves something only if the simulator's answers do
	// carry the spellings it searches for.
	t.Run("the simulator echoes what the check searches for", func(t *testing.T) {
		for _, echo := range providersim.Echoes() {
			sim.EchoRequests(echo)
			form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {echoRefreshToken},
				"client_id": {echoClientID}, "client_secret": {echoClientSecret}}
			desc := rawErrorDescription(t, sfEP.TokenURL, form)
			spellings := providersim.EchoSpellings(echoClientID, echoClientSecret, echoRefreshToken)
			found := 0
			for _, s := range spellings {
				if strings.Contains(desc, s) {
					found++
				}
			}
			// Each echo spells the client secret, and all but the Basic
			// ones the refresh token too.
			if want := 2; echo == providersim.EchoBasic || echo == providersim.EchoBasicURL {
				if found < 1 {
					t.Errorf("%s: the answer %q holds none of the spellings", echo, desc)
				}
			} else if found < want {
				t.Errorf("%s: the answer %q holds %d of the spellings, want >= %d", echo, desc, found, want)
			}
		}
		sim.EchoRequests(providersim.EchoNone)
		// The examples, computed independently of the simulator.
		sim.EchoRequests(providersim.EchoForm)
		if desc := rawErrorDescription(t, sfEP.TokenURL, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"RT/refresh+token"},
			"client_id": {echoClientID}}); !strings.Contains(desc, "RT%2Frefresh%2Btoken") {
			t.Errorf("form echo %q lacks RT%%2Frefresh%%2Btoken", desc)
		}
		sim.EchoRequests(providersim.EchoNone)
	})
}

// rawErrorDescription posts form to u and returns the answer's
// error_description, as a plain HTTP client sees it.
func rawErrorDescription(t *testing.T, u string, form url.Values) string {
	t.Helper()
	resp, err := http.PostForm(u, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Description string `json:"error_description"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return body.Description
}

// net/http quotes the bytes of a malformed status line in its error: a
// provider can echo a secret there too, outside any JSON body.
func TestEchoInMalformedResponseIsRedacted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 4096)
			_, _ = conn.Read(buf)
			_, _ = io.WriteString(conn, "HTTP/1.1 "+url.QueryEscape(echoRefreshToken)+" "+echoClientSecret+"\r\n\r\n")
			_ = conn.Close()
		}
	}()
	ep := oauth2Endpoint("http://" + ln.Addr().String())
	_, err = provider.New(nil).Refresh(context.Background(), ep, provider.ClientCredentials{ClientID: echoClientID, ClientSecret: echoClientSecret}, echoRefreshToken)
	if err == nil {
		t.Fatal("a malformed answer was accepted")
	}
	msg := err.Error()
	for _, s := range providersim.EchoSpellings(echoClientID, echoClientSecret, echoRefreshToken) {
		if strings.Contains(msg, s) {
			t.Errorf("error %q holds the secret spelled %q", msg, s)
		}
	}
	if !strings.Contains(msg, "[REDACTED]") {
		t.Errorf("error %q, want the malformed line with its secrets redacted", msg)
	}
	var pe *provider.Error
	if !errors.As(err, &pe) || pe.Outcome != provider.OutcomeUnknown {
		t.Errorf("got %v, want an unknown outcome: the request was sent", err)
	}
}
