package broker

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/detect"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/notice"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/fositeserver"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/store/memstore"
)

const (
	blindClientID     = "rotavault"
	blindClientSecret = "blind-introspection-secret"
	blindRedirect     = "http://127.0.0.1:1/callback"
)

// refreshBlindIntrospection is an RFC 7662 endpoint that introspects access
// tokens only, as some servers do: it asks fosite about access tokens and
// answers active=false about every refresh token (RFC 7662 §2.2 allows it
// for tokens it will not introspect).
//
// While accessDead is set it also calls every access token inactive: an
// access token revoked on its own (a user's logout) at such a provider.
func refreshBlindIntrospection(t *testing.T, fs *fositeserver.Server, accessDead *atomic.Bool) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			http.Error(w, "bad form", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if r.PostForm.Get("token_type_hint") != "access_token" || accessDead.Load() {
			_, _ = io.WriteString(w, `{"active":false}`)
			return
		}
		req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, fs.IntrospectionURL(), strings.NewReader(r.PostForm.Encode()))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Authorization", r.Header.Get("Authorization"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// blindEnv is a generic OAuth 2.0 credential "g" at a real fosite server
// whose introspection endpoint does not know refresh tokens, with a fresh
// family installed; old is the imported refresh token, superseded since.
func blindEnv(ctx context.Context, t *testing.T) (b *Broker, prov *detectProvider, fs *fositeserver.Server, old string) {
	b, prov, fs, old, _ = blindEnvWith(ctx, t, fositeserver.Config{})
	return b, prov, fs, old
}

// blindEnvWith is blindEnv, also returning the switch that makes the
// endpoint call access tokens inactive.
func blindEnvWith(ctx context.Context, t *testing.T, fcfg fositeserver.Config, opts ...option.Option) (b *Broker, prov *detectProvider, fs *fositeserver.Server, old string, accessDead *atomic.Bool) {
	t.Helper()
	fs, err := fositeserver.Start(fcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fs.Close() })
	fs.AddClient(blindClientID, blindClientSecret, []string{blindRedirect})
	accessDead = &atomic.Bool{}
	blind := refreshBlindIntrospection(t, fs, accessDead)
	prov = newDetectProvider()
	// The real clock: fosite's tokens expire by it.
	b = newBroker(t, Config{Store: memstore.New(), Provider: prov, Auditor: &recordingAuditor{}},
		append([]option.Option{option.WithSchedulerInterval(time.Hour), option.WithIntrospectionInterval(20 * time.Millisecond), withDetectTick(time.Millisecond)}, opts...)...)
	spec := credspec.Spec{
		ProviderKind: credspec.ProviderOAuth2, TokenURL: fs.TokenURL(), IntrospectionURL: blind.URL,
		ClientID: blindClientID, ClientSecret: blindClientSecret, Scopes: []string{"offline", "api"},
	}
	if _, err := b.Credentials().Create(ctx, "g", spec); err != nil {
		t.Fatal(err)
	}
	old, err = fs.IssueRefreshToken(ctx, blindClientID, blindClientSecret, blindRedirect, []string{"offline", "api"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.ImportRefreshToken(ctx, "g", old); err != nil {
		t.Fatal(err)
	}
	return b, prov, fs, old, accessDead
}

// A generic provider's introspection endpoint that answers "inactive" about
// every refresh token (it introspects access tokens only) must not make the
// periodic check revoke a healthy family: its access token, live at the
// provider, contradicts the verdict.
func TestPeriodicIntrospectionTrustsNoRefreshBlindEndpoint(t *testing.T) {
	ctx := context.Background()
	b, prov, fs, _ := blindEnv(ctx, t)
	before, err := b.GetAccessToken(ctx, access.Request{CredentialID: "g"})
	if err != nil {
		t.Fatal(err)
	}
	e, err := b.entry(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	await(t, "three periodic checks, or a revocation", func() bool {
		return prov.refreshIntrospections.Load() >= 3 || e.view.Load().fam.Status != family.StatusActive
	})
	c, err := b.Credentials().Get(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	if c.Status != family.StatusActive || c.FamilyID != before.FamilyID {
		t.Fatalf("after checks answered by a refresh-blind endpoint: status %s (%s), family %s; want the healthy family %s kept",
			c.Status, c.RevokedReason, c.FamilyID, before.FamilyID)
	}
	if s := fs.Stats(); s.InvalidGrants != 0 {
		t.Fatalf("fosite saw %+v", s)
	}
}

// The same endpoint still lets a real revocation through: a replayed old
// refresh token makes fosite revoke the family, its access token included,
// and the access token's inactivity confirms the refresh token's.
func TestPeriodicIntrospectionDetectsRevocationAtRefreshBlindEndpoint(t *testing.T) {
	ctx := context.Background()
	b, _, fs, old := blindEnv(ctx, t)
	replayAndAwaitRevocation(ctx, t, b, fs, old)
}

// Access tokens living 20 s (less than the minute of remaining life the
// check once needed to corroborate) still let the periodic check find a
// family revoked at a provider that introspects access tokens only: the
// access token is known alive there for its lifetime counted from the
// request, so its inactivity within that lifetime is a revocation. The
// credential says the check is active.
func TestPeriodicIntrospectionDetectsRevocationWithShortLivedAccessTokens(t *testing.T) {
	ctx := context.Background()
	b, _, fs, old, _ := blindEnvWith(ctx, t, fositeserver.Config{AccessTokenLifespan: 20 * time.Second})
	c, err := b.Credentials().Get(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	if c.EarlyDetection != detect.StateActive {
		t.Fatalf("early detection %s (%s) with a 20 s access token just issued, want active", c.EarlyDetection, c.EarlyDetectionDetail)
	}
	replayAndAwaitRevocation(ctx, t, b, fs, old)
}

// A family whose access token has run out at a generic provider cannot be
// corroborated: the credential says the check waits for a fresh access
// token, and with the check off, that it is off.
func TestEarlyDetectionStateSaysWhyInactive(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(time.Now())
	b, _, _, _, _ := blindEnvWith(ctx, t, fositeserver.Config{}, option.WithClock(clk.Now))
	clk.Add(2 * time.Hour) // the 1 h access token is gone
	c, err := b.Credentials().Get(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	if c.EarlyDetection != detect.StateWaiting {
		t.Fatalf("early detection %s (%s) with the access token expired, want waiting_for_access_token", c.EarlyDetection, c.EarlyDetectionDetail)
	}
	off, _, _, _, _ := blindEnvWith(ctx, t, fositeserver.Config{}, option.WithIntrospectionInterval(0))
	if c, err = off.Credentials().Get(ctx, "g"); err != nil || c.EarlyDetection != detect.StateDisabled {
		t.Fatalf("with the check off: %s, %v; want disabled", c.EarlyDetection, err)
	}
}

// replayAndAwaitRevocation replays old at fosite and awaits the notice that
// credential "g"'s family was found revoked at the provider.
func replayAndAwaitRevocation(ctx context.Context, t *testing.T, b *Broker, fs *fositeserver.Server, old string) {
	t.Helper()
	sub, err := b.Subscribe(ctx, []string{"g"}, "")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	replayAtFosite(t, fs, old)
	if n := nextNotice(t, sub); n.Kind != notice.FamilyRevoked || n.Reason != notice.ReasonRevokedAtProvider {
		t.Fatalf("notice %+v, want FAMILY_REVOKED (revoked at provider)", n)
	}
}

// replayAtFosite presents a superseded refresh token at fosite, which
// revokes its family (reuse detection).
func replayAtFosite(t *testing.T, fs *fositeserver.Server, old string) {
	t.Helper()
	resp, err := http.PostForm(fs.TokenURL(), url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {old}, "client_id": {blindClientID}, "client_secret": {blindClientSecret},
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("fosite answered the replay with %d, want 400", resp.StatusCode)
	}
}

// Salesforce documents introspecting refresh tokens: there an inactive
// refresh token needs no corroboration, also for an idle family whose access
// token has expired.
func TestSalesforceInactiveRefreshTokenNeedsNoCorroboration(t *testing.T) {
	ctx := context.Background()
	env := newDetectEnv(t, providersim.Config{})
	b := env.broker(t)
	old := env.install(ctx, t, b, "x", env.spec)
	env.clk.Add(3 * time.Hour) // the access token is long expired
	replayAtProvider(t, env.sim, old)
	e, err := b.entry(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	revoked, err := b.confirmRevokedAtProvider(ctx, e, e.view.Load(), "test")
	if err != nil || !revoked {
		t.Fatalf("confirm: revoked %v, %v; want the family revoked", revoked, err)
	}
}

// At a generic provider whose introspection does not know refresh tokens, an
// access token revoked on its own (a logout) and reported rejected must not
// revoke the family: the endpoint's "inactive" about the refresh token
// proves nothing, and the access token's death is what was reported, not a
// corroboration. The report is answered with a refresh, which a really
// revoked family would meet with invalid_grant.
func TestRejectedReportAtRefreshBlindEndpointRefreshesInsteadOfRevoking(t *testing.T) {
	ctx := context.Background()
	// The report's own handling is under test: with the periodic check on,
	// its next pass could see both tokens inactive first and revoke (the
	// corroboration rule cannot tell a logout from a revocation there).
	b, _, fs, _, accessDead := blindEnvWith(ctx, t, fositeserver.Config{}, option.WithIntrospectionInterval(0))
	tok, err := b.GetAccessToken(ctx, access.Request{CredentialID: "g"})
	if err != nil {
		t.Fatal(err)
	}
	accessDead.Store(true)
	got, err := b.GetAccessToken(ctx, access.Request{CredentialID: "g", Rejected: &access.RejectedToken{Generation: tok.Generation}})
	if err != nil {
		t.Fatalf("report of a token revoked alone: %v, want a fresh token", err)
	}
	if got.FamilyID != tok.FamilyID || got.Generation != tok.Generation+1 {
		t.Fatalf("after the report: family %s gen %d, want family %s gen %d", got.FamilyID, got.Generation, tok.FamilyID, tok.Generation+1)
	}
	if s := fs.Stats(); s.InvalidGrants != 0 {
		t.Fatalf("fosite saw %+v", s)
	}
}

// Records written before AliveUntil existed keep the old rule: a minute
// before the expiry counted from the answer.
func TestAliveAtProviderUntilForOldRecords(t *testing.T) {
	exp := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	if got := (&family.AccessToken{ExpiresAt: exp}).AliveAtProviderUntil(); !got.Equal(exp.Add(-time.Minute)) {
		t.Fatalf("old record: %v, want a minute before %v", got, exp)
	}
	alive := exp.Add(-3 * time.Second)
	if got := (&family.AccessToken{ExpiresAt: exp, AliveUntil: alive}).AliveAtProviderUntil(); !got.Equal(alive) {
		t.Fatalf("new record: %v, want %v", got, alive)
	}
}
