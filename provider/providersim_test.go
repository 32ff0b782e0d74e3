package provider_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/providersim"
)

const simRedirectURI = "https://vault.example/callback"

// setupSimTest starts a Salesforce simulator with one connected app and
// returns it, its endpoints and the app's credentials.
func setupSimTest(t *testing.T, cfg providersim.Config) (*providersim.Server, provider.Endpoint, provider.ClientCredentials) {
	t.Helper()
	sim, err := providersim.Start(cfg)
	if err != nil {
		t.Fatalf("providersim.Start: %v", err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	cc := provider.ClientCredentials{ClientID: "3MVG9sim", ClientSecret: "sim-consumer-secret"}
	sim.AddClient(providersim.Client{ID: cc.ClientID, Secret: cc.ClientSecret, RedirectURIs: []string{simRedirectURI}, RequirePKCE: true})
	return sim, provider.SalesforceEndpoint(sim.URL()), cc
}

func issue(t *testing.T, sim *providersim.Server, cc provider.ClientCredentials) string {
	t.Helper()
	rt, err := sim.IssueRefreshToken(cc.ClientID, nil)
	if err != nil {
		t.Fatalf("IssueRefreshToken: %v", err)
	}
	return rt
}

func TestSimRefreshRotates(t *testing.T) {
	sim, ep, cc := setupSimTest(t, providersim.Config{})
	c := provider.New(nil)
	ctx := context.Background()
	rt := issue(t, sim, cc)
	before := time.Now().Add(-time.Second)
	for i := range 3 {
		tok, err := c.Refresh(ctx, ep, cc, rt)
		if err != nil {
			t.Fatalf("refresh %d: %v", i, err)
		}
		if tok.RefreshToken == "" || tok.RefreshToken == rt {
			t.Fatalf("refresh %d did not rotate", i)
		}
		if tok.SignatureStatus != provider.SignatureValid {
			t.Errorf("refresh %d: signature %v, want valid", i, tok.SignatureStatus)
		}
		if tok.InstanceURL != sim.URL() || tok.ExpiresIn != 0 || tok.AccessToken == "" || tok.IDURL == "" {
			t.Errorf("refresh %d: token %v, want instance_url %s, no expires_in, an access token and id", i, tok, sim.URL())
		}
		if tok.IssuedAt.Before(before) || tok.IssuedAt.After(time.Now().Add(time.Second)) {
			t.Errorf("refresh %d: IssuedAt %v is not now", i, tok.IssuedAt)
		}
		rt = tok.RefreshToken
	}
	if st := sim.Stats(); st.Rotations != 3 || st.ReuseDetections != 0 {
		t.Errorf("stats %+v, want 3 rotations, no reuse", st)
	}
}

func TestSimReuseRevokesFamily(t *testing.T) {
	sim, ep, cc := setupSimTest(t, providersim.Config{})
	c := provider.New(nil)
	ctx := context.Background()
	old := issue(t, sim, cc)
	tok, err := c.Refresh(ctx, ep, cc, old)
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}

	_, err = c.Refresh(ctx, ep, cc, old)
	pe := asProviderError(t, err)
	if pe.Outcome != provider.OutcomeRejected || !errors.Is(err, provider.ErrInvalidGrant) || !pe.Permanent() {
		t.Errorf("reuse: got %v (outcome %v, permanent %v), want a permanent invalid_grant rejection", err, pe.Outcome, pe.Permanent())
	}
	// The family is gone: the current refresh token dies with it.
	_, err = c.Refresh(ctx, ep, cc, tok.RefreshToken)
	if !errors.Is(err, provider.ErrInvalidGrant) {
		t.Errorf("current token after reuse: got %v, want invalid_grant", err)
	}
	if st := sim.Stats(); st.ReuseDetections != 1 || st.FamiliesRevoked != 1 {
		t.Errorf("stats %+v, want 1 reuse detection, 1 family revoked", st)
	}
}

func TestSimInjectedFailures(t *testing.T) {
	tests := []struct {
		kind       providersim.FailureKind
		outcome    provider.Outcome
		retryAfter time.Duration
		deadline   bool
		// processed: the simulator rotated, so the sent token is now dead.
		processed bool
	}{
		{kind: providersim.FailUnavailable, outcome: provider.OutcomeNotProcessed},
		{kind: providersim.FailRateLimited, outcome: provider.OutcomeNotProcessed, retryAfter: time.Second},
		// The simulator did not process it, but a 500 cannot tell a client so.
		{kind: providersim.FailServerError, outcome: provider.OutcomeUnknown},
		{kind: providersim.FailLoseResponse, outcome: provider.OutcomeUnknown, processed: true},
		{kind: providersim.FailHang, outcome: provider.OutcomeUnknown, deadline: true, processed: true},
	}
	for _, tt := range tests {
		t.Run(tt.kind.String(), func(t *testing.T) {
			sim, ep, cc := setupSimTest(t, providersim.Config{})
			c := provider.New(nil)
			rt := issue(t, sim, cc)
			sim.InjectFailure(tt.kind, 1)

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if tt.deadline {
				ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
			}
			_, err := c.Refresh(ctx, ep, cc, rt)
			cancel()
			pe := asProviderError(t, err)
			if pe.Outcome != tt.outcome {
				t.Errorf("Outcome = %v, want %v (%v)", pe.Outcome, tt.outcome, err)
			}
			if pe.RetryAfter != tt.retryAfter {
				t.Errorf("RetryAfter = %v, want %v", pe.RetryAfter, tt.retryAfter)
			}
			if pe.Permanent() {
				t.Errorf("Permanent() = true for %v", err)
			}
			if tt.deadline && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("errors.Is(err, context.DeadlineExceeded) = false for %v", err)
			}

			// What a blind retry of the same refresh token does.
			_, retryErr := c.Refresh(context.Background(), ep, cc, rt)
			if tt.processed {
				if !errors.Is(retryErr, provider.ErrInvalidGrant) {
					t.Errorf("retry after a processed request: got %v, want invalid_grant (the family is lost)", retryErr)
				}
				if st := sim.Stats(); st.LostResponses != 1 || st.FamiliesRevoked != 1 {
					t.Errorf("stats %+v, want 1 lost response and the family revoked by the retry", st)
				}
			} else if retryErr != nil {
				t.Errorf("retry after an unprocessed request: %v, want success", retryErr)
			}
		})
	}
}

// With a reuse grace (Okta, Hydra) a retry after a lost response is safe.
func TestSimLostResponseWithinGrace(t *testing.T) {
	sim, ep, cc := setupSimTest(t, providersim.Config{ReuseGrace: time.Minute})
	c := provider.New(nil)
	rt := issue(t, sim, cc)
	sim.InjectFailure(providersim.FailLoseResponse, 1)
	_, err := c.Refresh(context.Background(), ep, cc, rt)
	if pe := asProviderError(t, err); pe.Outcome != provider.OutcomeUnknown {
		t.Fatalf("lost response: outcome %v, want unknown (%v)", pe.Outcome, err)
	}
	tok, err := c.Refresh(context.Background(), ep, cc, rt)
	if err != nil {
		t.Fatalf("retry within grace: %v", err)
	}
	if tok.RefreshToken == "" || tok.RefreshToken == rt {
		t.Errorf("retry within grace did not rotate")
	}
}

func TestSimCorruptSignatures(t *testing.T) {
	sim, ep, cc := setupSimTest(t, providersim.Config{})
	sim.CorruptSignatures(true)
	tok, err := provider.New(nil).Refresh(context.Background(), ep, cc, issue(t, sim, cc))
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if tok.SignatureStatus != provider.SignatureMismatch {
		t.Errorf("SignatureStatus = %v, want mismatch", tok.SignatureStatus)
	}
	if tok.RefreshToken == "" {
		t.Errorf("the rotated refresh token must be returned even with a bad signature")
	}
}

func TestSimRotationDisabled(t *testing.T) {
	sim, ep, cc := setupSimTest(t, providersim.Config{DisableRotation: true})
	c := provider.New(nil)
	rt := issue(t, sim, cc)
	for i := range 2 {
		tok, err := c.Refresh(context.Background(), ep, cc, rt)
		if err != nil {
			t.Fatalf("refresh %d: %v", i, err)
		}
		if tok.RefreshToken != "" {
			t.Errorf("refresh %d returned a refresh token without rotation", i)
		}
	}
}

// The web server flow with PKCE, then introspection and revocation.
func TestSimAuthCodeFlow(t *testing.T) {
	_, ep, cc := setupSimTest(t, providersim.Config{SessionTimeout: time.Hour})
	c := provider.New(nil)
	ctx := context.Background()

	verifier, challenge := provider.NewPKCE()
	authURL, err := c.AuthCodeURL(ep, cc, simRedirectURI, "st-42", challenge, []string{"api", "refresh_token"})
	if err != nil {
		t.Fatalf("AuthCodeURL: %v", err)
	}
	browser := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := browser.Get(authURL)
	if err != nil {
		t.Fatalf("GET authorize: %v", err)
	}
	_ = resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusFound || err != nil {
		t.Fatalf("authorize answered %d %v, want a redirect", resp.StatusCode, err)
	}
	code := loc.Query().Get("code")
	if code == "" || loc.Query().Get("state") != "st-42" {
		t.Fatalf("redirect %s lacks the code or the state", loc.Redacted())
	}

	tok, err := c.ExchangeCode(ctx, ep, cc, code, simRedirectURI, verifier)
	if err != nil {
		t.Fatalf("ExchangeCode: %v", err)
	}
	if tok.RefreshToken == "" || tok.SignatureStatus != provider.SignatureValid {
		t.Errorf("exchange: token %v, want a refresh token and a valid signature", tok)
	}
	if _, err := c.ExchangeCode(ctx, ep, cc, code, simRedirectURI, verifier); !errors.Is(err, provider.ErrInvalidGrant) {
		t.Errorf("second exchange of the code: got %v, want invalid_grant", err)
	}

	in, err := c.Introspect(ctx, ep, cc, tok.AccessToken)
	if err != nil {
		t.Fatalf("Introspect: %v", err)
	}
	if !in.Active || in.Expiry.Before(time.Now().Add(50*time.Minute)) || in.Expiry.After(time.Now().Add(61*time.Minute)) {
		t.Errorf("introspection %+v, want active with exp about an hour away", in)
	}

	if err := c.Revoke(ctx, ep, cc, tok.RefreshToken); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	in, err = c.Introspect(ctx, ep, cc, tok.AccessToken)
	if err != nil || in.Active {
		t.Errorf("introspection after revoking the refresh token: %+v, %v, want inactive", in, err)
	}
	if _, err := c.Refresh(ctx, ep, cc, tok.RefreshToken); !errors.Is(err, provider.ErrInvalidGrant) {
		t.Errorf("refresh after revoke: got %v, want invalid_grant", err)
	}

	t.Run("wrong verifier is rejected", func(t *testing.T) {
		_, challenge := provider.NewPKCE()
		authURL, _ := c.AuthCodeURL(ep, cc, simRedirectURI, "st-43", challenge, nil)
		resp, err := browser.Get(authURL)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		loc, _ := url.Parse(resp.Header.Get("Location"))
		otherVerifier, _ := provider.NewPKCE()
		_, err = c.ExchangeCode(ctx, ep, cc, loc.Query().Get("code"), simRedirectURI, otherVerifier)
		if pe := asProviderError(t, err); pe.Outcome != provider.OutcomeRejected {
			t.Errorf("got %v, want a rejection", err)
		}
	})
}
