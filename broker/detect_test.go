package broker

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/notice"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/memstore"
)

// detectDeadline bounds every wait for an asynchronous outcome; generous,
// since it is a deadline, not a measurement.
const detectDeadline = 15 * time.Second

// detectProvider is the real provider client with hooks: it counts
// refresh-token introspections, can run a function just before the next
// one, and can run a function after the next successful refresh (before
// the broker stores its result).
type detectProvider struct {
	*provider.Client
	refreshIntrospections atomic.Int32
	beforeIntrospect      atomic.Pointer[func()]
	afterRefresh          atomic.Pointer[func()]
	// gate, when set, holds every refresh-token introspection until it
	// can receive from it; inFlight and maxInFlight count the held ones.
	gate        atomic.Pointer[chan struct{}]
	inFlight    atomic.Int32
	maxInFlight atomic.Int32
}

func newDetectProvider() *detectProvider {
	return &detectProvider{Client: provider.New(nil)}
}

func (p *detectProvider) IntrospectToken(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, token string, hint provider.TokenTypeHint) (provider.Introspection, error) {
	if hint == provider.HintRefreshToken {
		if f := p.beforeIntrospect.Swap(nil); f != nil {
			(*f)()
		}
		if g := p.gate.Load(); g != nil {
			n := p.inFlight.Add(1)
			for {
				m := p.maxInFlight.Load()
				if n <= m || p.maxInFlight.CompareAndSwap(m, n) {
					break
				}
			}
			select {
			case <-*g:
			case <-ctx.Done():
			}
			p.inFlight.Add(-1)
		}
	}
	in, err := p.Client.IntrospectToken(ctx, ep, cc, token, hint)
	if hint == provider.HintRefreshToken {
		p.refreshIntrospections.Add(1)
	}
	return in, err
}

func (p *detectProvider) Refresh(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, rt string) (*provider.Token, error) {
	tok, err := p.Client.Refresh(ctx, ep, cc, rt)
	if f := p.afterRefresh.Swap(nil); f != nil && err == nil {
		(*f)()
	}
	return tok, err
}

// withDetectTick makes the detection loop look for due checks every d.
func withDetectTick(d time.Duration) option.Option {
	return func(o *option.Options) error { o.Detect.Tick = d; return nil }
}

type detectEnv struct {
	st   store.Store
	clk  *fakeclock.Clock
	sim  *providersim.Server
	prov *detectProvider
	aud  *recordingAuditor
	spec credspec.Spec
}

func newDetectEnv(t *testing.T, simCfg providersim.Config) *detectEnv {
	t.Helper()
	clk := fakeclock.New(time.Now())
	simCfg.Now = clk.Now
	sim := startSim(t, simCfg)
	return &detectEnv{st: memstore.New(), clk: clk, sim: sim, prov: newDetectProvider(), aud: &recordingAuditor{}, spec: simSpec(sim)}
}

func (env *detectEnv) broker(t *testing.T, extra ...option.Option) *Broker {
	t.Helper()
	return newBroker(t, Config{Store: env.st, Provider: env.prov, Auditor: env.aud}, replicaOpts(env.clk, extra...)...)
}

// install creates credential id with spec and a fresh family, refreshed once,
// and returns the imported refresh token: superseded now, the "old token" a
// thief or a legacy client could hold.
func (env *detectEnv) install(ctx context.Context, t *testing.T, b *Broker, id string, spec credspec.Spec) string {
	t.Helper()
	if _, err := b.Credentials().Create(ctx, id, spec); err != nil {
		t.Fatal(err)
	}
	old, err := env.sim.IssueRefreshToken("c", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.ImportRefreshToken(ctx, id, old); err != nil {
		t.Fatal(err)
	}
	return old
}

// replayAtProvider presents a superseded refresh token at the simulator's
// token endpoint, as a legacy client or a thief would: Salesforce revokes
// the whole family.
func replayAtProvider(t *testing.T, sim *providersim.Server, oldToken string) {
	t.Helper()
	resp, err := http.PostForm(sim.URL()+"/services/oauth2/token", url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {oldToken}, "client_id": {"c"}, "client_secret": {"s"},
	})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || sim.Stats().ReuseDetections != 1 {
		t.Fatalf("replay answered %d, reuse detections %d; want 400 and the family revoked", resp.StatusCode, sim.Stats().ReuseDetections)
	}
}

// driveClock advances clk by step every few milliseconds of real time until
// the test ends: the periodic check's interval passes in simulated time,
// whatever the loop's phase when the test starts.
func driveClock(t *testing.T, clk *fakeclock.Clock, step time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				clk.Add(step)
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// await polls cond until it holds or the deadline passes.
func await(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, detectDeadline, what, cond)
}

func nextNotice(t *testing.T, s *notice.Subscription) notice.Notice {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), detectDeadline)
	defer cancel()
	n, err := s.Next(ctx)
	if err != nil {
		t.Fatalf("awaiting a notice: %v", err)
	}
	return n
}

// revocationNotices returns the FAMILY_REVOKED notices in the store's notice
// log.
func revocationNotices(ctx context.Context, t *testing.T, st store.Store) []notice.Notice {
	t.Helper()
	kept, err := notice.Kept(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	var out []notice.Notice
	for _, n := range kept {
		if n.Kind == notice.FamilyRevoked {
			out = append(out, n)
		}
	}
	return out
}

func familyOf(ctx context.Context, t *testing.T, st store.Store, id string) family.Record {
	t.Helper()
	var f family.Record
	if err := json.Unmarshal(famRecord(ctx, t, st, id).Value, &f); err != nil {
		t.Fatal(err)
	}
	return f
}

// A family revoked at the provider by the replay of an old token is found
// by the periodic check alone: no consumer call, no refresh presented.
func TestPeriodicIntrospectionDetectsFamilyRevokedAtProvider(t *testing.T) {
	ctx := context.Background()
	env := newDetectEnv(t, providersim.Config{})
	const interval = time.Minute
	b := env.broker(t, option.WithIntrospectionInterval(interval), withDetectTick(time.Millisecond))
	old := env.install(ctx, t, b, "x", env.spec)
	before := familyOf(ctx, t, env.st, "x")
	sub, err := b.Subscribe(ctx, []string{"x"}, "")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	replayAtProvider(t, env.sim, old)
	revokedAt := env.clk.Now()
	refreshes := env.sim.Stats().RefreshRequests
	driveClock(t, env.clk, interval/20)

	n := nextNotice(t, sub)
	if n.Kind != notice.FamilyRevoked || n.Reason != notice.ReasonRevokedAtProvider || n.FamilyID != before.FamilyID || n.Generation != before.Generation {
		t.Fatalf("notice = %+v, want FAMILY_REVOKED (revoked_at_provider) of %s gen %d", n, before.FamilyID, before.Generation)
	}
	t.Logf("detected %s of simulated time after the revocation; interval %s (the clock moves %s per step)",
		n.DetectedAt.Sub(revokedAt), interval, interval/20)
	if got := env.sim.Stats().RefreshRequests - refreshes; got != 0 {
		t.Errorf("the detection presented the refresh token %d times; want 0", got)
	}
	_, err = b.GetAccessToken(ctx, access.Request{CredentialID: "x"})
	if !errors.Is(err, brokererr.ErrReauthRequired) {
		t.Fatalf("GetAccessToken after detection: %v, want ErrReauthRequired", err)
	}
	if f := familyOf(ctx, t, env.st, "x"); f.Status != family.StatusRevoked || f.RevokedReason != notice.ReasonRevokedAtProvider || f.RefreshToken != "" || f.Access != nil {
		t.Errorf("stored family = %+v, want revoked at provider, without tokens", f)
	}
	if ev, ok := env.aud.last(audit.ActionFamilyRevoked); !ok || ev.Reason != string(notice.ReasonRevokedAtProvider) || ev.Family != before.FamilyID {
		t.Errorf("audit = %+v %v, want family_revoked revoked_at_provider", ev, ok)
	}
	if got := env.sim.Stats().RefreshRequests - refreshes; got != 0 {
		t.Errorf("%d refreshes after detection; want 0", got)
	}
}

// A live family is introspected periodically and left alone; a credential
// whose provider offers no introspection endpoint is never introspected.
func TestPeriodicIntrospectionLeavesLiveFamiliesAlone(t *testing.T) {
	ctx := context.Background()
	env := newDetectEnv(t, providersim.Config{})
	const interval = time.Minute
	b := env.broker(t, option.WithIntrospectionInterval(interval), withDetectTick(time.Millisecond))
	env.install(ctx, t, b, "sf", env.spec)
	// A generic OAuth 2.0 provider without an introspection endpoint (the
	// simulator's token endpoint speaks close enough to RFC 6749).
	generic := credspec.Spec{ProviderKind: credspec.ProviderOAuth2, TokenURL: env.sim.URL() + "/services/oauth2/token", ClientID: "c", ClientSecret: "s"}
	env.install(ctx, t, b, "generic", generic)
	before := familyOf(ctx, t, env.st, "sf")
	refreshes := env.sim.Stats().RefreshRequests

	driveClock(t, env.clk, interval/20)
	await(t, "three periodic checks", func() bool { return env.prov.refreshIntrospections.Load() >= 3 })
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// The Salesforce credential resolves its introspection endpoint from
	// its base URL, the generic one has none: an attempt for it would fail
	// before sending and leave the simulator's count behind the broker's.
	if got := env.sim.Stats().Introspections; got != int(env.prov.refreshIntrospections.Load()) {
		t.Errorf("simulator saw %d introspections, the broker made %d", got, env.prov.refreshIntrospections.Load())
	}
	if f := familyOf(ctx, t, env.st, "sf"); f.Status != family.StatusActive || f.Generation != before.Generation || f.RefreshToken != before.RefreshToken {
		t.Errorf("live family changed by periodic checks: %+v", f)
	}
	if f := familyOf(ctx, t, env.st, "generic"); f.Status != family.StatusActive {
		t.Errorf("generic family: %+v", f)
	}
	if got := env.sim.Stats().RefreshRequests - refreshes; got != 0 {
		t.Errorf("periodic checks caused %d refreshes", got)
	}
	if n := revocationNotices(ctx, t, env.st); len(n) != 0 {
		t.Errorf("revocation notices: %+v", n)
	}
}

// A consumer reporting its access token rejected, when the family was
// revoked at the provider, gets REAUTHENTICATION_REQUIRED at once, and the
// refresh token is never presented. When only the access token died, the
// report refreshes as before.
func TestRejectedTokenReportDetectsFamilyRevokedAtProvider(t *testing.T) {
	ctx := context.Background()
	t.Run("family revoked at the provider: no refresh", func(t *testing.T) {
		env := newDetectEnv(t, providersim.Config{})
		b := env.broker(t)
		old := env.install(ctx, t, b, "x", env.spec)
		tok, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x"})
		if err != nil {
			t.Fatal(err)
		}
		sub, err := b.Subscribe(ctx, []string{"x"}, "")
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		replayAtProvider(t, env.sim, old)
		refreshes, introspections := env.sim.Stats().RefreshRequests, env.sim.Stats().Introspections

		_, err = b.GetAccessToken(ctx, access.Request{CredentialID: "x", Rejected: &access.RejectedToken{Generation: tok.Generation}})
		if !errors.Is(err, brokererr.ErrReauthRequired) {
			t.Fatalf("report: %v, want ErrReauthRequired", err)
		}
		if f := familyOf(ctx, t, env.st, "x"); f.Status != family.StatusRevoked || f.RevokedReason != notice.ReasonRevokedAtProvider {
			t.Fatalf("stored family %+v, want revoked at provider", f)
		}
		if n := nextNotice(t, sub); n.Reason != notice.ReasonRevokedAtProvider || n.FamilyID != tok.FamilyID || n.Generation != tok.Generation {
			t.Fatalf("notice = %+v", n)
		}
		s := env.sim.Stats()
		if s.RefreshRequests != refreshes {
			t.Errorf("the report presented the refresh token %d times; want 0", s.RefreshRequests-refreshes)
		}
		if s.Introspections-introspections != 2 {
			t.Errorf("%d introspections, want 2 (the access token, then the refresh token)", s.Introspections-introspections)
		}
	})
	t.Run("only the access token died: one refresh", func(t *testing.T) {
		env := newDetectEnv(t, providersim.Config{})
		b := env.broker(t)
		env.install(ctx, t, b, "x", env.spec)
		tok, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x"})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.PostForm(env.sim.URL()+"/services/oauth2/revoke", url.Values{"token": {tok.Token}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		refreshes := env.sim.Stats().RefreshRequests
		got, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x", Rejected: &access.RejectedToken{Fingerprint: tok.Fingerprint}})
		if err != nil {
			t.Fatal(err)
		}
		if got.FamilyID != tok.FamilyID || got.Generation != tok.Generation+1 || env.sim.Stats().RefreshRequests != refreshes+1 {
			t.Fatalf("got family %s gen %d after %d refreshes; want the same family, one refresh", got.FamilyID, got.Generation, env.sim.Stats().RefreshRequests-refreshes)
		}
	})
}

// An inactive answer caused by a rotation this replica has not seen yet is
// not a revocation: the re-read finds the family moved on.
func TestIntrospectionRacingARotationDoesNotRevoke(t *testing.T) {
	ctx := context.Background()
	// Replicas a and b share credential x; seen is a's view of it.
	twoReplicas := func(t *testing.T) (env *detectEnv, a, b *Broker, ea, eb *entry, seen *view) {
		t.Helper()
		env = newDetectEnv(t, providersim.Config{})
		a, b = env.broker(t), env.broker(t)
		// b has loaded what was stored before x: it reads x when asked.
		if err := b.loader.Await(ctx); err != nil {
			t.Fatal(err)
		}
		env.install(ctx, t, a, "x", env.spec)
		ea, err := a.entry(ctx, "x")
		if err != nil {
			t.Fatal(err)
		}
		eb, err = b.entry(ctx, "x")
		if err != nil {
			t.Fatal(err)
		}
		return env, a, b, ea, eb, ea.view.Load()
	}
	t.Run("another replica rotated before the re-read", func(t *testing.T) {
		env, a, b, ea, eb, seen := twoReplicas(t)
		// Replica b rotates after a picked the token to introspect: the
		// provider then calls a's token inactive (no grace period).
		rotate := func() {
			if _, err := b.refresh(ctx, eb, nil, func(*view) bool { return true }); err != nil {
				t.Error(err)
			}
		}
		env.prov.beforeIntrospect.Store(&rotate)
		a.checkFamily(ctx, ea, seen)

		f := familyOf(ctx, t, env.st, "x")
		if f.Status != family.StatusActive || f.FamilyID != seen.fam.FamilyID || f.Generation != seen.fam.Generation+1 {
			t.Fatalf("stored family %+v, want b's rotation (generation %d), active", f, seen.fam.Generation+1)
		}
		if n := revocationNotices(ctx, t, env.st); len(n) != 0 || env.sim.Stats().FamiliesRevoked != 0 {
			t.Fatalf("revocations: %+v, at the provider %d", n, env.sim.Stats().FamiliesRevoked)
		}
		if got, err := a.GetAccessToken(ctx, access.Request{CredentialID: "x"}); err != nil || got.Generation != f.Generation {
			t.Fatalf("a afterwards: %+v %v", got, err)
		}
	})
	t.Run("a refresh in flight already rotated at the provider", func(t *testing.T) {
		env, a, b, ea, eb, seen := twoReplicas(t)
		// b holds the claim and the provider has rotated, but b has not
		// stored the result yet when a introspects and re-reads.
		check := func() { a.checkFamily(ctx, ea, seen) }
		env.prov.afterRefresh.Store(&check)
		if _, err := b.refresh(ctx, eb, nil, func(*view) bool { return true }); err != nil {
			t.Fatalf("b's refresh: %v", err)
		}
		if env.prov.refreshIntrospections.Load() != 1 {
			t.Fatalf("%d introspections; the check did not run during b's refresh", env.prov.refreshIntrospections.Load())
		}
		f := familyOf(ctx, t, env.st, "x")
		if f.Status != family.StatusActive || f.Generation != seen.fam.Generation+1 {
			t.Fatalf("stored family %+v, want b's rotation stored, active", f)
		}
		if n := revocationNotices(ctx, t, env.st); len(n) != 0 {
			t.Fatalf("revocation notices: %+v", n)
		}
	})
}

// An introspection endpoint that is down, failing or answering nonsense
// revokes nothing, even when the family really is revoked at the provider.
func TestIntrospectionOutageRevokesNothing(t *testing.T) {
	ctx := context.Background()
	closedPort := func(t *testing.T) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return "http://" + addr + "/introspect"
	}
	serving := func(status int, body string) func(t *testing.T) string {
		return func(t *testing.T) string {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(status)
				_, _ = w.Write([]byte(body))
			}))
			t.Cleanup(srv.Close)
			return srv.URL + "/introspect"
		}
	}
	tests := []struct {
		name     string
		endpoint func(t *testing.T) string
	}{
		{"connection refused", closedPort},
		{"503 with a body", serving(http.StatusServiceUnavailable, `{"error":"temporarily_unavailable"}`)},
		{"500", serving(http.StatusInternalServerError, `{"error":"server_error"}`)},
		{"200 without active", serving(http.StatusOK, `{"exp":1}`)},
		{"200 not JSON", serving(http.StatusOK, `<html>maintenance</html>`)},
		{"401 invalid_client", serving(http.StatusUnauthorized, `{"error":"invalid_client"}`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newDetectEnv(t, providersim.Config{})
			const interval = time.Minute
			b := env.broker(t, option.WithIntrospectionInterval(interval), withDetectTick(time.Millisecond))
			spec := env.spec
			spec.IntrospectionURL = tt.endpoint(t)
			old := env.install(ctx, t, b, "x", spec)
			before := familyOf(ctx, t, env.st, "x")
			replayAtProvider(t, env.sim, old)
			refreshes := env.sim.Stats().RefreshRequests

			driveClock(t, env.clk, interval/20)
			await(t, "three periodic checks", func() bool { return env.prov.refreshIntrospections.Load() >= 3 })
			if err := b.Close(); err != nil { // waits for checks in flight
				t.Fatal(err)
			}
			if f := familyOf(ctx, t, env.st, "x"); f.Status != family.StatusActive || f.Generation != before.Generation {
				t.Errorf("family after failed checks: %+v, want unchanged", f)
			}
			if n := revocationNotices(ctx, t, env.st); len(n) != 0 {
				t.Errorf("revocation notices: %+v", n)
			}
			if got := env.sim.Stats().RefreshRequests - refreshes; got != 0 {
				t.Errorf("%d refreshes", got)
			}
		})
	}
}

// However many checks are due, at most the configured number of
// introspections are in flight.
func TestPeriodicIntrospectionConcurrencyIsBounded(t *testing.T) {
	ctx := context.Background()
	env := newDetectEnv(t, providersim.Config{})
	const (
		interval    = time.Minute
		limit       = 2
		credentials = 6
		releases    = 20
	)
	b := env.broker(t, option.WithIntrospectionInterval(interval), option.WithIntrospectionConcurrency(limit), withDetectTick(time.Millisecond))
	for i := range credentials {
		env.install(ctx, t, b, string(rune('a'+i)), env.spec)
	}
	gate := make(chan struct{})
	env.prov.gate.Store(&gate)
	t.Cleanup(func() { close(gate) })
	// Checks keep coming due: every credential about every 40ms.
	driveClock(t, env.clk, interval/20)

	for range releases {
		await(t, "a full set of introspections in flight", func() bool { return env.prov.inFlight.Load() >= limit })
		gate <- struct{}{} // one finishes; the next due check may start
	}
	if got := env.prov.maxInFlight.Load(); got != limit {
		t.Fatalf("at most %d introspections were in flight, want exactly the limit %d", got, limit)
	}
	await(t, "the released introspections finished", func() bool { return env.prov.refreshIntrospections.Load() >= releases })
}

func TestIntrospectionOptionsValidate(t *testing.T) {
	for _, tt := range []struct {
		opt option.Option
		ok  bool
	}{
		{option.WithIntrospectionInterval(0), true},
		{option.WithIntrospectionInterval(10 * time.Millisecond), true},
		{option.WithIntrospectionInterval(24 * time.Hour), true},
		{option.WithIntrospectionInterval(time.Millisecond), false},
		{option.WithIntrospectionInterval(-time.Second), false},
		{option.WithIntrospectionInterval(25 * time.Hour), false},
		{option.WithIntrospectionConcurrency(1), true},
		{option.WithIntrospectionConcurrency(0), false},
		{option.WithIntrospectionConcurrency(1025), false},
	} {
		o := option.Defaults()
		if err := tt.opt(&o); (err == nil) != tt.ok {
			t.Errorf("option %+v: err %v, want ok=%v", o, err, tt.ok)
		}
	}
}
