package integration

import (
	"net/http"
	"net/url"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/rotavault/rotavault/broker/option"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/fositeserver"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/server"
)

// Generic OAuth 2.0 providers (Okta, Auth0, Hydra, Keycloak) against a real
// ory/fosite server: expires_in honoured, lost responses retried only as far
// as the provider's grace period makes safe, 403 invalid_grant treated like
// 400. Rotation, reuse → family revocation and the plain lost response are
// in fosite_test.go.
//
// fosite v0.49.0 has no refresh-token rotation grace period (its memory
// store's RotateRefreshToken revokes the old token at once; Hydra adds the
// grace period in its own persister), so grace periods are exercised against
// the simulator's Okta/Hydra-style grace mode.

// withFositeCredential starts fosite with cfg and registers it as generic
// OAuth 2.0 credential id; mutate may change the spec. It returns the
// imported (now superseded) refresh token.
func withFositeCredential(t *testing.T, e *env, id string, cfg fositeserver.Config, mutate ...func(*fositeserver.Server, *rotavaultv1.CredentialSpec)) (*fositeserver.Server, string) {
	t.Helper()
	fs := startFosite(t, cfg)
	return fs, addFositeCredential(t, e, fs, id, mutate...)
}

// startFosite starts fosite with the test client.
func startFosite(t *testing.T, cfg fositeserver.Config) *fositeserver.Server {
	t.Helper()
	fs, err := fositeserver.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fs.Close() })
	fs.AddClient(fositeClientID, fositeClientSecret, []string{callbackURI})
	return fs
}

// addFositeCredential registers fs as generic OAuth 2.0 credential id and
// imports a fresh family, returning the imported (now superseded) refresh
// token.
func addFositeCredential(t *testing.T, e *env, fs *fositeserver.Server, id string, mutate ...func(*fositeserver.Server, *rotavaultv1.CredentialSpec)) string {
	t.Helper()
	spec := &rotavaultv1.CredentialSpec{
		ProviderKind:  rotavaultv1.ProviderKind_PROVIDER_KIND_OAUTH2,
		TokenUrl:      fs.TokenURL(),
		AuthorizeUrl:  fs.AuthorizeURL(),
		RevocationUrl: fs.RevocationURL(),
		ClientId:      fositeClientID,
		ClientSecret:  fositeClientSecret,
		Scopes:        []string{"offline", "api"},
	}
	for _, m := range mutate {
		m(fs, spec)
	}
	if _, err := e.admin.CreateCredential(ctxT(t), &rotavaultv1.CreateCredentialRequest{CredentialId: id, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	rt, err := fs.IssueRefreshToken(ctxT(t), fositeClientID, fositeClientSecret, callbackURI, []string{"offline", "api"})
	if err != nil {
		t.Fatal(err)
	}
	e.importToken(id, rt)
	return rt
}

// The access token's lifetime is fosite's expires_in, not the credential's
// configured lifetime, and the proactive refresh is scheduled from it.
func TestFositeExpiresInDrivesExpiryAndProactiveRefresh(t *testing.T) {
	const (
		fositeLife     = 7 * time.Minute
		configuredLife = time.Hour // what a provider without expires_in would get
	)
	e := newEnv(t, envOptions{brokerOpts: []option.Option{option.WithSchedulerInterval(10 * time.Millisecond)}})
	fs, _ := withFositeCredential(t, e, "okta", fositeserver.Config{AccessTokenLifespan: fositeLife},
		func(_ *fositeserver.Server, s *rotavaultv1.CredentialSpec) {
			s.AccessTokenLifetime = durationpb.New(configuredLife)
		})

	first := e.token("okta") // in use from now on: refreshed ahead of expiry
	wantLifetime(t, first, first.GetIssueTime().AsTime(), fositeLife)
	desc, err := e.admin.GetCredential(ctxT(t), &rotavaultv1.GetCredentialRequest{CredentialId: "okta"})
	if err != nil {
		t.Fatal(err)
	}
	expiry, next := desc.GetCredential().GetAccessTokenExpireTime().AsTime(), desc.GetCredential().GetNextRefreshTime().AsTime()
	if !expiry.Equal(first.GetExpireTime().AsTime()) {
		t.Fatalf("credential says the token expires at %s, the token says %s", expiry, first.GetExpireTime().AsTime())
	}
	// Ahead of the 7-minute expiry, late in the token's life: a refresh
	// scheduled from the configured hour would fall after it.
	if !next.Before(expiry) || next.Before(expiry.Add(-fositeLife/5)) {
		t.Fatalf("next refresh at %s, want within the last fifth of the %s life ending %s", next, fositeLife, expiry)
	}

	before := fs.Stats().RefreshRequests
	e.clock.advance(next.Sub(e.clock.now()) + time.Second)
	// The scheduler refreshes on its own; callers then get the new token
	// from the cache.
	var second *rotavaultv1.GetAccessTokenResponse
	awaitCondition(t, "the proactive refresh", func() bool {
		second = e.token("okta")
		return second.GetGeneration() != first.GetGeneration()
	})
	if second.GetFamilyId() != first.GetFamilyId() || second.GetGeneration() != first.GetGeneration()+1 || second.GetAccessToken() == first.GetAccessToken() {
		t.Fatalf("after the proactive refresh: family %s gen %d, want %s gen %d with a new token",
			second.GetFamilyId(), second.GetGeneration(), first.GetFamilyId(), first.GetGeneration()+1)
	}
	// Refreshed at most a few real milliseconds before the broker's clock
	// says now.
	wantLifetime(t, second, e.clock.now(), fositeLife)
	if s := fs.Stats(); s.RefreshRequests != before+1 || s.InvalidGrants != 0 {
		t.Fatalf("fosite saw %+v; want exactly one proactive refresh, no refusal", s)
	}
}

// wantLifetime checks that tok, obtained at from by the broker's clock,
// expires want later.
func wantLifetime(t *testing.T, tok *rotavaultv1.GetAccessTokenResponse, from time.Time, want time.Duration) {
	t.Helper()
	// fosite rounds expiry to the second; the broker counts from its own
	// clock when the answer arrived.
	life := tok.GetExpireTime().AsTime().Sub(from)
	if d := life - want; d < -2*time.Second || d > 2*time.Second {
		t.Fatalf("token lifetime %s, want expires_in's %s", life, want)
	}
}

// A lost refresh response is retried only as far as the provider's reuse
// grace period makes it safe.
func TestLostResponseRetriesAreBounded(t *testing.T) {
	t.Run("fosite, no grace period: one retry, which meets the reuse", func(t *testing.T) {
		e := newEnv(t, envOptions{})
		fs, _ := withFositeCredential(t, e, "hydra", fositeserver.Config{AccessTokenLifespan: accessLifetime})
		wantLostRotationAfter(t, e, "hydra", func() { fs.LoseNextResponses(1) }, func() int { return fs.Stats().RefreshRequests }, 2)
		if s := fs.Stats(); s.LostResponses != 1 || s.InvalidGrants != 1 {
			t.Fatalf("fosite saw %+v", s)
		}
	})
	t.Run("fosite, a grace period configured that the provider lacks: still one retry", func(t *testing.T) {
		e := newEnv(t, envOptions{})
		fs, _ := withFositeCredential(t, e, "hydra", fositeserver.Config{AccessTokenLifespan: accessLifetime},
			func(_ *fositeserver.Server, s *rotavaultv1.CredentialSpec) {
				s.ReuseGracePeriod = durationpb.New(time.Minute)
			})
		wantLostRotationAfter(t, e, "hydra", func() { fs.LoseNextResponses(1) }, func() int { return fs.Stats().RefreshRequests }, 2)
	})
	t.Run("simulator with a grace period: the retry recovers the family", func(t *testing.T) {
		e := newEnv(t, envOptions{sim: providersim.Config{ReuseGrace: time.Minute}})
		e.installSalesforce("okta", func(s *rotavaultv1.CredentialSpec) { s.ReuseGracePeriod = durationpb.New(time.Minute) })
		first := e.token("okta")
		before := e.sim.Stats()
		e.sim.InjectFailure(providersim.FailLoseResponse, 1)
		e.expire()
		tok := e.token("okta")
		if tok.GetFamilyId() != first.GetFamilyId() || tok.GetGeneration() != first.GetGeneration()+1 || !e.sim.AccessTokenActive(tok.GetAccessToken()) {
			t.Fatalf("got family %s gen %d; want the family recovered at the next generation", tok.GetFamilyId(), tok.GetGeneration())
		}
		s := e.sim.Stats()
		if s.RefreshRequests-before.RefreshRequests != 2 || s.GraceReuses != 1 || s.FamiliesRevoked != 0 {
			t.Fatalf("provider saw %d refreshes (want 2: the lost one and its retry), %+v", s.RefreshRequests-before.RefreshRequests, s)
		}
	})
	t.Run("simulator, a single-use grace and two lost answers: a lost rotation after three presentations", func(t *testing.T) {
		// Auth0 accepts the previous token once within its leeway. When the
		// retry's answer is lost too, the token the retry produced is
		// unknown and the previous one is spent: no presentation can save
		// the family. The broker stops at the provider's refusal.
		e := newEnv(t, envOptions{sim: providersim.Config{ReuseGrace: time.Minute}})
		e.installSalesforce("auth0", func(s *rotavaultv1.CredentialSpec) { s.ReuseGracePeriod = durationpb.New(time.Minute) })
		wantLostRotationAfter(t, e, "auth0", func() { e.sim.InjectFailure(providersim.FailLoseResponse, 2) }, func() int { return e.sim.Stats().RefreshRequests }, 3)
		if s := e.sim.Stats(); s.GraceReuses != 1 || s.ReuseDetections != 1 {
			t.Fatalf("provider saw %+v", s)
		}
	})
}

// wantLostRotationAfter makes credential id's next refresh meet lose(), and
// checks that the family ends as a lost rotation (not theft) after exactly
// want presentations of its refresh token.
func wantLostRotationAfter(t *testing.T, e *env, id string, lose func(), refreshes func() int, want int) {
	t.Helper()
	stream, _ := e.watch(ctxT(t), "", id)
	first := e.token(id)
	before := refreshes()
	lose()
	e.expire()
	_, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: id})
	wantCode(t, err, codes.FailedPrecondition, server.ReasonReauthenticationRequired)
	n := nextNotice(t, stream)
	if n.GetReason() != rotavaultv1.RevocationReason_REVOCATION_REASON_LOST_ROTATION || n.GetFamilyId() != first.GetFamilyId() {
		t.Fatalf("notice %+v, want LOST_ROTATION of %s", n, first.GetFamilyId())
	}
	if got := refreshes() - before; got != want {
		t.Fatalf("the refresh token was presented %d times, want %d", got, want)
	}
	// And never again: callers get REAUTHENTICATION_REQUIRED without a call.
	_, err = e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: id})
	wantCode(t, err, codes.FailedPrecondition, server.ReasonReauthenticationRequired)
	if got := refreshes() - before; got != want {
		t.Fatalf("a revoked family was presented again (%d presentations)", got)
	}
}

// Auth0 answers a reused refresh token with HTTP 403 invalid_grant; it must
// revoke the family exactly as fosite's (and Salesforce's) 400 does.
func TestInvalidGrantStatus403IsLike400(t *testing.T) {
	for _, status := range []int{http.StatusBadRequest, http.StatusForbidden} {
		t.Run(http.StatusText(status)+": reuse revokes the family", func(t *testing.T) {
			e := newEnv(t, envOptions{})
			fs, old := withFositeCredential(t, e, "auth0", fositeserver.Config{AccessTokenLifespan: accessLifetime, InvalidGrantStatus: status})
			stream, _ := e.watch(ctxT(t), "", "auth0")
			first := e.token("auth0")
			resp, err := http.PostForm(fs.TokenURL(), url.Values{
				"grant_type": {"refresh_token"}, "refresh_token": {old}, "client_id": {fositeClientID}, "client_secret": {fositeClientSecret},
			})
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != status {
				t.Fatalf("fosite answered the reuse with %d, want %d", resp.StatusCode, status)
			}
			before := fs.Stats().RefreshRequests
			e.expire()
			_, err = e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "auth0"})
			wantCode(t, err, codes.FailedPrecondition, server.ReasonReauthenticationRequired)
			n := nextNotice(t, stream)
			if n.GetReason() != rotavaultv1.RevocationReason_REVOCATION_REASON_REFRESH_TOKEN_REJECTED || n.GetFamilyId() != first.GetFamilyId() {
				t.Fatalf("notice %+v, want REFRESH_TOKEN_REJECTED of %s", n, first.GetFamilyId())
			}
			if got := fs.Stats().RefreshRequests - before; got != 1 {
				t.Fatalf("the refused token was presented %d times, want once (no retry of a refusal)", got)
			}
		})
		t.Run(http.StatusText(status)+": the retry after a lost response is a lost rotation", func(t *testing.T) {
			e := newEnv(t, envOptions{})
			fs, _ := withFositeCredential(t, e, "auth0", fositeserver.Config{AccessTokenLifespan: accessLifetime, InvalidGrantStatus: status})
			wantLostRotationAfter(t, e, "auth0", func() { fs.LoseNextResponses(1) }, func() int { return fs.Stats().RefreshRequests }, 2)
		})
	}
}

// A provider app that accepts only client_secret_basic (Okta lets an app
// pick one method): with the credential set to it, rotation works end to
// end; the default form-field method is refused as invalid_client, which
// keeps the family (a client problem, not a token one).
func TestClientSecretBasicProvider(t *testing.T) {
	e := newEnv(t, envOptions{})
	cfg := fositeserver.Config{AccessTokenLifespan: accessLifetime, TokenEndpointAuthMethod: "client_secret_basic"}
	fs, _ := withFositeCredential(t, e, "okta-app", cfg, func(_ *fositeserver.Server, spec *rotavaultv1.CredentialSpec) {
		spec.ClientAuthMethod = rotavaultv1.ClientAuthMethod_CLIENT_AUTH_METHOD_CLIENT_SECRET_BASIC
	})
	first := e.token("okta-app")
	e.expire()
	second := e.token("okta-app")
	if second.GetFamilyId() != first.GetFamilyId() || second.GetGeneration() != first.GetGeneration()+1 {
		t.Fatalf("rotation with client_secret_basic: %+v then %+v", first, second)
	}

	// The same app with the credential switched to form fields.
	if _, err := e.admin.UpdateCredential(ctxT(t), &rotavaultv1.UpdateCredentialRequest{CredentialId: "okta-app",
		Spec:       &rotavaultv1.CredentialSpec{ClientAuthMethod: rotavaultv1.ClientAuthMethod_CLIENT_AUTH_METHOD_CLIENT_SECRET_POST},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"client_auth_method"}}}); err != nil {
		t.Fatal(err)
	}
	e.expire()
	_, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "okta-app"})
	wantCode(t, err, codes.FailedPrecondition, server.ReasonProviderRejectedClient)
	if s := fs.Stats(); s.InvalidGrants != 0 {
		t.Fatalf("fosite saw %+v: the family must not be spent", s)
	}

	// Basic needs a secret, and is for generic providers only.
	_, err = e.admin.CreateCredential(ctxT(t), &rotavaultv1.CreateCredentialRequest{CredentialId: "sf", Spec: &rotavaultv1.CredentialSpec{
		ProviderKind: rotavaultv1.ProviderKind_PROVIDER_KIND_SALESFORCE, BaseUrl: e.sim.URL(), ClientId: simClientID, ClientSecret: simClientSecret,
		Scopes: []string{"api", "refresh_token"}, ClientAuthMethod: rotavaultv1.ClientAuthMethod_CLIENT_AUTH_METHOD_CLIENT_SECRET_BASIC}})
	wantCode(t, err, codes.InvalidArgument, "")
}
