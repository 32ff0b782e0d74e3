package broker

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/store/memstore"
)

// claimWrites matches family writes that carry a claim.
func claimWrites(_ string, value []byte) bool {
	var f family.Record
	return decodeRecord(value, &f, &f.Format) == nil && f.Claim != nil
}

// slowClaimSetup is a broker on real time with 4 s claims (1 s margin) on a
// fault-injecting store, credential x of a simulator, and a refresh token
// the simulator issued.
func slowClaimSetup(t *testing.T) (*faultStore, *providersim.Server, *Broker, string) {
	t.Helper()
	fs := &faultStore{Store: memstore.New()}
	sim := startSim(t, providersim.Config{})
	b := newTestBroker(t, fs, option.WithSchedulerInterval(time.Hour), option.WithIntrospectionInterval(0), option.WithRetryBase(time.Millisecond), option.WithClaimTiming(4*time.Second, time.Second))
	if _, err := b.Credentials().Create(context.Background(), "x", simSpec(sim)); err != nil {
		t.Fatal(err)
	}
	rt, _ := sim.IssueRefreshToken("c", nil)
	return fs, sim, b, rt
}

// A claim write the store is slow to accept (Vault retrying through an
// outage) used to eat the provider call's time: the call then failed for
// want of time and callers got PROVIDER_UNAVAILABLE from a provider never
// asked. The claim's time now starts after a write; a store slow at every
// write is blamed as the store.
func TestSlowClaimWriteBlamesTheStoreNotTheProvider(t *testing.T) {
	// Real time: the claim's deadline bounds the provider call's context.
	const slow = 3200 * time.Millisecond // more than the claim's 4 s minus its 1 s margin
	for _, tt := range []struct {
		name      string
		slowTimes int
		wantErr   bool
	}{
		{"one slow claim write: claimed again, the refresh succeeds", 1, false},
		{"every claim write slow: STORE_UNAVAILABLE", 2, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			fs, sim, b, rt := slowClaimSetup(t)
			var mu sync.Mutex
			left := tt.slowTimes
			fs.inject(&fault{op: "put", prefix: "families/", match: claimWrites, before: func() {
				mu.Lock()
				n := left
				left--
				mu.Unlock()
				if n > 0 {
					time.Sleep(slow) // the store's own latency, not a wait for a condition
				}
			}})
			_, err := b.ImportRefreshToken(ctx, "x", rt)
			var ue *brokererr.UnavailableError
			switch {
			case tt.wantErr && (!errors.As(err, &ue) || ue.Component != brokererr.ComponentStore):
				t.Fatalf("every claim write slow: %v, want the store unavailable", err)
			case tt.wantErr && sim.Stats().RefreshRequests != 0:
				t.Fatalf("the provider was called with no time left: %+v", sim.Stats())
			case !tt.wantErr && err != nil:
				t.Fatalf("one slow claim write: %v, want the refresh to succeed", err)
			}
		})
	}
}

// pausedProvider stands for a replica paused in its provider call: it
// signals the call, waits until resumed, and reports a timeout, having
// presented nothing.
type pausedProvider struct {
	Provider
	entered chan struct{} // closed when the first refresh pauses
	resume  chan struct{}
	paused  atomic.Bool
}

// Refresh pauses the first refresh, however late the test gets to wait for
// it (a send on an unbuffered channel paused only a refresh that found the
// test already waiting, and under load let it through to the provider).
func (p *pausedProvider) Refresh(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, rt string) (*provider.Token, error) {
	if !p.paused.CompareAndSwap(false, true) {
		return p.Provider.Refresh(ctx, ep, cc, rt)
	}
	close(p.entered)
	<-p.resume
	return nil, &provider.Error{Op: "refresh", Outcome: provider.OutcomeUnknown, Description: "timeout (test)"}
}

// Callers queued on a replica paused past its claim got ABORTED when it
// resumed, although the replica that took over had stored a fresh token:
// they now get that token.
func TestCallersOfAReplicaPausedPastItsClaimGetTheTakeoversToken(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(time.Now())
	st := memstore.New()
	sim := startSim(t, providersim.Config{Now: clk.Now})
	paused := &pausedProvider{Provider: provider.New(nil), entered: make(chan struct{}), resume: make(chan struct{})}
	a := newBroker(t, Config{Store: st, Provider: paused, Auditor: &recordingAuditor{}}, replicaOpts(clk)...)
	b := newTestBroker(t, st, replicaOpts(clk)...)
	if _, err := b.Credentials().Create(ctx, "x", simSpec(sim)); err != nil {
		t.Fatal(err)
	}
	rt, _ := sim.IssueRefreshToken("c", nil)
	if _, err := b.ImportRefreshToken(ctx, "x", rt); err != nil {
		t.Fatal(err)
	}
	clk.Add(3 * time.Hour)
	type answer struct {
		tok access.Token
		err error
	}
	answers := make(chan answer, 3)
	for range 3 {
		go func() {
			tok, err := a.GetAccessToken(ctx, access.Request{CredentialID: "x"})
			answers <- answer{tok, err}
		}()
	}
	<-paused.entered // A holds the claim, paused in its provider call
	poll.Until(t, 10*time.Second, "A's callers queued", func() bool { return a.Stats().CacheMisses == 3 })
	clk.Add(time.Minute) // past A's claim
	taken, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x"})
	if err != nil {
		t.Fatalf("B's takeover: %v", err)
	}
	close(paused.resume)
	for range 3 {
		got := <-answers
		if got.err != nil || got.tok.Token != taken.Token {
			t.Fatalf("a caller queued on A: %v (generation %d), want the takeover's token (generation %d)", got.err, got.tok.Generation, taken.Generation)
		}
	}
	if s := sim.Stats(); s.ReuseDetections != 0 {
		t.Fatalf("provider saw a reuse: %+v", s)
	}
}

// A claim written again after a slow write may find the family moved on
// (another replica refreshed meanwhile): the replica decides again on what
// the store holds and adopts the other's result.
func TestSlowClaimWriteAdoptsAnotherReplicasRefresh(t *testing.T) {
	ctx := context.Background()
	fs, sim, b, rt := slowClaimSetup(t)
	fs.inject(&fault{op: "put", prefix: "families/", match: claimWrites, once: true, before: func() { time.Sleep(3200 * time.Millisecond) }})
	// Before the second claim write, another replica stores its rotation.
	fs.inject(&fault{op: "put", prefix: "families/", match: claimWrites, once: true, before: func() {
		f := storedFamily(ctx, t, fs.Store)
		rec := famRecord(ctx, t, fs.Store, "x")
		f.Claim, f.Unproven, f.Generation, f.RefreshToken = nil, false, f.Generation+1, "rt-other"
		f.Access = &family.AccessToken{Token: "at-other", Type: "Bearer", IssuedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour), Fingerprint: access.Fingerprint("at-other")}
		raw, err := encodeRecord(&f)
		if err != nil {
			t.Error(err)
			return
		}
		if _, err := fs.Store.Put(ctx, rec.Key, raw, rec.Version); err != nil {
			t.Error(err)
		}
	}})
	act, err := b.ImportRefreshToken(ctx, "x", rt)
	if err != nil || act.Generation != 1 || act.Unproven {
		t.Fatalf("import whose slow claim met another replica's refresh: %+v %v, want the other's generation 1 adopted", act, err)
	}
	if s := sim.Stats(); s.RefreshRequests != 0 {
		t.Fatalf("the provider was asked although another replica had refreshed: %+v", s)
	}
}
