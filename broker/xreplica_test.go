package broker

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/memstore"
)

// startSim starts a provider simulator that knows client "c" (secret "s").
func startSim(t *testing.T, cfg providersim.Config) *providersim.Server {
	t.Helper()
	sim, err := providersim.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	sim.AddClient(providersim.Client{ID: "c", Secret: "s"})
	return sim
}

// simSpec is a Salesforce credential of the simulator's client.
func simSpec(sim *providersim.Server) credspec.Spec {
	return credspec.Spec{ProviderKind: credspec.ProviderSalesforce, BaseURL: sim.URL(), ClientID: "c", ClientSecret: "s", Scopes: []string{"api", "refresh_token"}}
}

// replicaOpts run a replica on clk with the scheduler and periodic
// introspection out of the way and fast retries; extra options come last and
// win.
func replicaOpts(clk *fakeclock.Clock, extra ...option.Option) []option.Option {
	return append([]option.Option{option.WithClock(clk.Now), option.WithSchedulerInterval(time.Hour), option.WithRetryBase(time.Millisecond), option.WithIntrospectionInterval(0)}, extra...)
}

func setup(t *testing.T, st store.Store, clk *fakeclock.Clock) (*providersim.Server, []*Broker, credspec.Spec) {
	sim := startSim(t, providersim.Config{Now: clk.Now})
	var bs []*Broker
	for i := 0; i < 2; i++ {
		bs = append(bs, newTestBroker(t, st, replicaOpts(clk)...))
	}
	return sim, bs, simSpec(sim)
}

// A result write that Vault applied but whose answer was lost and replayed
// by the Vault client (go-retryablehttp, MaxRetries=2) comes back as a CAS
// mismatch: it must count as stored, and the token must not be revoked as an
// orphan (it is the stored one).
func TestLostResultAnswerIsNotMistakenForALostRace(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(time.Now())
	hs := &faultStore{Store: memstore.New()}
	sim, bs, spec := setup(t, hs, clk)
	a := bs[0]
	if _, err := a.Credentials().Create(ctx, "x", spec); err != nil {
		t.Fatal(err)
	}
	rt, _ := sim.IssueRefreshToken("c", nil)
	if _, err := a.ImportRefreshToken(ctx, "x", rt); err != nil {
		t.Fatal(err)
	}
	// the client's replay of the result write
	replayed := &fault{op: "put", prefix: "families/", once: true, replay: true, match: func(_ string, value []byte) bool {
		var f family.Record
		return decodeRecord(value, &f, &f.Format) == nil && f.Claim == nil && f.Generation >= 2
	}}
	hs.inject(replayed)
	clk.Add(3 * time.Hour)
	_, err := a.GetAccessToken(ctx, access.Request{CredentialID: "x"})
	t.Logf("first refresh: %v", err)
	if replayed.hits.Load() != 1 {
		t.Fatal("the result write was never replayed")
	}
	f := storedFamily(ctx, t, hs.Store)
	t.Logf("stored: gen %d status %s; provider: %+v", f.Generation, f.Status, sim.Stats())
	clk.Add(3 * time.Hour)
	_, err = bs[1].GetAccessToken(ctx, access.Request{CredentialID: "x"})
	t.Logf("next refresh on replica B: %v", err)
	if errors.Is(err, brokererr.ErrReauthRequired) {
		t.Fatalf("family lost after a successful, stored rotation: %v", err)
	}
}

// Store versions restart after Delete (store.go contract). A replica that
// still caches the deleted credential's family must not claim optimistically
// on a version number the recreated family has reached and overwrite it.
func TestRecreatedCredentialIsNotOverwrittenByAStaleReplica(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(time.Now())
	st := memstore.New()
	sim, bs, spec := setup(t, st, clk)
	a, b := bs[0], bs[1]
	if _, err := a.Credentials().Create(ctx, "x", spec); err != nil {
		t.Fatal(err)
	}
	rt, _ := sim.IssueRefreshToken("c", nil)
	if _, err := a.ImportRefreshToken(ctx, "x", rt); err != nil {
		t.Fatal(err)
	}
	// B deletes and recreates x with a new family.
	if err := b.Credentials().Delete(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Credentials().Create(ctx, "x", spec); err != nil {
		t.Fatal(err)
	}
	rt2, _ := sim.IssueRefreshToken("c", nil)
	act, err := b.ImportRefreshToken(ctx, "x", rt2)
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(3 * time.Hour)
	_, err = a.GetAccessToken(ctx, access.Request{CredentialID: "x"})
	t.Logf("A (stale cache) refresh: %v", err)
	f := storedFamily(ctx, t, st)
	t.Logf("stored family %s (new one was %s) status %s reason %s", f.FamilyID, act.FamilyID, f.Status, f.RevokedReason)
	if f.FamilyID != act.FamilyID || f.Status != family.StatusActive {
		t.Fatal("the recreated credential's family was overwritten by a replica's stale cache")
	}
}

// A held (rescued) rotation whose claim was taken over after its deadline
// must be dropped, so the replica serves the family the store now holds
// instead of failing every refresh.
func TestHeldRotationIsDroppedAfterATakeover(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(time.Now())
	mem := memstore.New()
	sim := startSim(t, providersim.Config{Now: clk.Now, ReuseGrace: 10 * time.Minute})
	// the store rejects A's family writes but claims (not applied) while
	// down
	fs := &faultStore{Store: mem}
	a := newTestBroker(t, fs, replicaOpts(clk)...)
	b := newTestBroker(t, mem, replicaOpts(clk)...)
	spec := simSpec(sim)
	spec.ReuseGrace = 10 * time.Minute
	if _, err := a.Credentials().Create(ctx, "x", spec); err != nil {
		t.Fatal(err)
	}
	rt, _ := sim.IssueRefreshToken("c", nil)
	if _, err := a.ImportRefreshToken(ctx, "x", rt); err != nil {
		t.Fatal(err)
	}
	up := fs.inject(&fault{op: "put", prefix: "families/", match: familyWrites(false), fail: errStoreDown})
	clk.Add(3 * time.Hour)
	_, err := a.GetAccessToken(ctx, access.Request{CredentialID: "x"})
	ea, eerr := a.entry(ctx, "x")
	if eerr != nil {
		t.Fatal(eerr)
	}
	held := ea.rescue.Load() != nil
	t.Logf("A: %v (held=%v)", err, held)
	if !held {
		t.Fatal("A holds no rotation: the test does not reach the takeover it is about")
	}
	up()
	clk.Add(time.Minute) // past A's claim deadline
	tb, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x"})
	t.Logf("B takeover: gen %d err %v; sim %+v", tb.Generation, err, sim.Stats())
	for i := 0; i < 3; i++ {
		clk.Add(3 * time.Hour)
		_, err = a.GetAccessToken(ctx, access.Request{CredentialID: "x"})
		t.Logf("A later: %v", err)
	}
	if err != nil {
		t.Fatal("replica A is wedged on a dead held rotation while the family is live")
	}
}

func TestStressTwoReplicas(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(time.Now())
	st := memstore.New()
	sim := startSim(t, providersim.Config{Now: clk.Now})
	var bs []*Broker
	for i := 0; i < 3; i++ {
		// Claims outlast any refresh here by far (10 min of simulated time,
		// 1.2 s of wall time at the pace below): the protocol assumes pauses
		// shorter than the claim margin, and a clock jumping past a claim's
		// deadline while its holder's refresh is in flight would test a
		// takeover, not concurrent callers.
		bs = append(bs, newTestBroker(t, st, replicaOpts(clk, option.WithSchedulerInterval(10*time.Millisecond), option.WithRejectionInterval(0),
			option.WithClaimTiming(10*time.Minute, 4*time.Minute))...))
	}
	spec := simSpec(sim)
	spec.AccessTokenLife = 30 * time.Second // a rotation every few steps
	if _, err := bs[0].Credentials().Create(ctx, "x", spec); err != nil {
		t.Fatal(err)
	}
	rt, _ := sim.IssueRefreshToken("c", nil)
	if _, err := bs[0].ImportRefreshToken(ctx, "x", rt); err != nil {
		t.Fatal(err)
	}
	const workers = 20
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for _, b := range bs {
		for g := 0; g < workers; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					tok, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x"})
					if err == nil && g%5 == 0 {
						_, err = b.GetAccessToken(ctx, access.Request{CredentialID: "x", Rejected: &access.RejectedToken{Fingerprint: tok.Fingerprint}})
					}
					if err != nil && errors.Is(err, brokererr.ErrReauthRequired) {
						t.Errorf("reauth: %v", err)
						return
					}
				}
			}()
		}
	}
	// Pacing, not synchronisation: the workers run throughout, and the clock
	// moves 10 s every 20ms of wall time (the tokens last 30 s).
	for i := 0; i < 50; i++ {
		time.Sleep(20 * time.Millisecond)
		clk.Add(10 * time.Second)
	}
	close(stop)
	wg.Wait()
	t.Logf("sim %+v", sim.Stats())
	if s := sim.Stats(); s.ReuseDetections != 0 || s.FamiliesRevoked != 0 {
		t.Fatalf("refresh token reuse across replicas: %d reuse detections, %d families revoked", s.ReuseDetections, s.FamiliesRevoked)
	}
}

// famRecord reads the one family record of credential id.
func famRecord(ctx context.Context, t *testing.T, st store.Store, id string) store.Record {
	t.Helper()
	keys, err := st.List(ctx, "families/"+id+"/")
	if err != nil || len(keys) != 1 {
		t.Fatalf("family records of %s: %v %v", id, keys, err)
	}
	rec, err := st.Get(ctx, keys[0])
	if err != nil {
		t.Fatal(err)
	}
	return rec
}
