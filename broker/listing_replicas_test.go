package broker

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/notice"
	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/memstore"
	"github.com/rotavault/rotavault/vaultstore"
)

// Two replicas on one Vault path: a credential created or deleted on one
// shows in the other's ListCredentials within one notice poll (500 ms by
// default) once the call that made it returned, as the README says — its
// listing of the folder never ages past a refresh period here, so no LIST
// of Vault shows it — and at once in its own. The deletion of a family
// that is not active tells it too, though no watcher hears of it. The
// bound is counted in polls, not measured in time: b's polls are stepped
// one at a time.
func TestListCredentialsShowsAnotherReplicasChangesOnceItsNoticeIsFollowed(t *testing.T) {
	a, b, bPolls, sim := listingReplicas(t)
	ctx := t.Context()
	wantListed(t, "b before any change", b) // b's listing is built: only hints change it
	bPolls.start(t)
	if _, err := a.Credentials().Create(ctx, "one", simSpec(sim)); err != nil {
		t.Fatal(err)
	}
	wantListed(t, "a's own creation, at once", a, "one")
	bPolls.one(t)
	wantListed(t, "b, one poll after a's creation returned", b, "one")
	if _, err := a.Credentials().Create(ctx, "two", simSpec(sim)); err != nil {
		t.Fatal(err)
	}
	if err := a.Credentials().Delete(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	wantListed(t, "a's own changes, at once", a, "two")
	bPolls.one(t)
	wantListed(t, "b, one poll after a's creation and deletion returned", b, "two")
}

// pollGate steps a replica's notice polls: once started, each read of the
// notice log's head — the start of a poll — waits at the gate until the
// test lets one through.
type pollGate struct {
	store.Store
	on      atomic.Bool
	arrived chan struct{}
	proceed chan struct{}
}

func newPollGate(st store.Store) *pollGate {
	return &pollGate{Store: st, arrived: make(chan struct{}), proceed: make(chan struct{})}
}

func (g *pollGate) Get(ctx context.Context, key string) (store.Record, error) {
	if key == notice.HeadKey && g.on.Load() {
		for _, ch := range []chan struct{}{g.arrived, g.proceed} {
			select {
			case ch <- struct{}{}:
			case <-ctx.Done():
				return store.Record{}, ctx.Err()
			}
		}
	}
	return g.Store.Get(ctx, key)
}

// start holds the next poll at the gate, and lets the polls go on freely
// when the test ends.
func (g *pollGate) start(t *testing.T) {
	t.Helper()
	g.on.Store(true)
	g.await(t)
	t.Cleanup(func() {
		g.on.Store(false)
		g.release(t)
	})
}

// one lets the held poll read the head and holds the next one: the poll
// in between, begun after every call the test made before, is complete.
func (g *pollGate) one(t *testing.T) {
	t.Helper()
	g.release(t)
	g.await(t)
}

// release lets the held poll read the head.
func (g *pollGate) release(t *testing.T) { t.Helper(); receive(t, g.proceed, "the held poll to go on") }

// await waits for the next poll to reach the gate.
func (g *pollGate) await(t *testing.T) { t.Helper(); receive(t, g.arrived, "a notice poll to begin") }

func receive(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("waited 10 s for %s", what)
	}
}

// A deletion's notice may be logged after the notice of the same id's
// creation anew on another replica: a replica hinting the deletion to its
// store then would hide a credential that exists until the store's next
// LIST. The deletion is hinted only once the record is seen gone.
func TestListCredentialsKeepsACredentialWhoseDeletionNoticeCameAfterItsCreation(t *testing.T) {
	a, b, _, sim := listingReplicas(t)
	ctx := t.Context()
	if _, err := a.Credentials().Create(ctx, "one", simSpec(sim)); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "b lists the credential", func() bool { return slices.Equal(listed(t, b), []string{"one"}) })
	// A late notice of an earlier deletion of "one", as the notice log
	// would deliver it to b.
	b.Credentials().Remote(ctx, notice.Notice{CredentialID: "one", Kind: notice.CredentialDeleted})
	wantListed(t, "after a deletion notice of a credential that exists", b, "one")
}

// listingReplicas are two replicas on one Vault dev server whose stores'
// listings never age (their clock stands still): what the second lists of
// the first's changes comes from hints, not from a LIST. bPolls steps the
// second's notice polls once started.
func listingReplicas(t *testing.T) (a, b *Broker, bPolls *pollGate, sim *providersim.Server) {
	t.Helper()
	srv := vaulttest.StartDev(t)
	listClock := fakeclock.New(time.Now())
	open := func() *vaultstore.Store {
		vs, err := vaultstore.New(context.Background(), vaultstore.Config{Client: srv.Client(t), ListRefresh: time.Minute, Now: listClock.Now})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = vs.Close() })
		return vs
	}
	clk := fakeclock.New(time.Now())
	sim = startSim(t, providersim.Config{Now: clk.Now})
	bPolls = newPollGate(open())
	return newTestBroker(t, open(), replicaOpts(clk)...), newTestBroker(t, bPolls, replicaOpts(clk)...), bPolls, sim
}

// listed is the first page of br's credentials' ids.
func listed(t *testing.T, br *Broker) []string {
	t.Helper()
	page, _, err := br.Credentials().List(t.Context(), "", 10)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range page {
		out = append(out, c.ID)
	}
	return out
}

func wantListed(t *testing.T, what string, br *Broker, expect ...string) {
	t.Helper()
	if got := listed(t, br); !slices.Equal(got, expect) {
		t.Fatalf("%s: %q, want %q", what, got, expect)
	}
}

// On a store whose pages read the keys themselves (the embedded store,
// memstore) nothing is announced: a creation and a deletion append no
// notice, and onboarding pays no write for hints no store takes.
func TestCredentialChangesAnnounceNothingOnAStoreWithoutListingHints(t *testing.T) {
	for name, st := range map[string]store.Store{"memstore": memstore.New(), "embedded": openBolt(t)} {
		t.Run(name, func(t *testing.T) {
			clk := fakeclock.New(time.Now())
			sim := startSim(t, providersim.Config{Now: clk.Now})
			br := newTestBroker(t, st, replicaOpts(clk)...)
			ctx := t.Context()
			if _, err := br.Credentials().Create(ctx, "one", simSpec(sim)); err != nil {
				t.Fatal(err)
			}
			if err := br.Credentials().Delete(ctx, "one"); err != nil {
				t.Fatal(err)
			}
			if head, err := br.notices.Head(ctx); err != nil || head != 0 {
				t.Fatalf("notice log head %d, %v; want no notice", head, err)
			}
		})
	}
}
