package broker

import (
	"context"
	"fmt"
	"slices"
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
// shows in the other's ListCredentials once that replica has followed the
// notice log (a poll, 500 ms by default) — its listing of the folder never
// ages past a refresh period here, so no LIST of Vault shows it — and at
// once in its own. The deletion of a family that is not active tells it
// too, though no watcher hears of it.
func TestListCredentialsShowsAnotherReplicasChangesOnceItsNoticeIsFollowed(t *testing.T) {
	a, b, sim := listingReplicas(t)
	ctx := t.Context()
	if _, err := a.Credentials().Create(ctx, "one", simSpec(sim)); err != nil {
		t.Fatal(err)
	}
	wantListed(t, "a's own creation, at once", a, "one")
	eventually := func(what string, expect ...string) {
		t.Helper()
		poll.UntilSeen(t, 10*time.Second, what, func() (bool, string) {
			got := listed(t, b)
			return slices.Equal(got, expect), fmt.Sprint(got)
		})
	}
	eventually("b lists a's creation", "one")
	if _, err := a.Credentials().Create(ctx, "two", simSpec(sim)); err != nil {
		t.Fatal(err)
	}
	if err := a.Credentials().Delete(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	wantListed(t, "a's own changes, at once", a, "two")
	eventually("b lists a's creation and deletion", "two")
}

// A deletion's notice may be logged after the notice of the same id's
// creation anew on another replica: a replica hinting the deletion to its
// store then would hide a credential that exists until the store's next
// LIST. The deletion is hinted only once the record is seen gone.
func TestListCredentialsKeepsACredentialWhoseDeletionNoticeCameAfterItsCreation(t *testing.T) {
	a, b, sim := listingReplicas(t)
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
// the first's changes comes from hints, not from a LIST.
func listingReplicas(t *testing.T) (a, b *Broker, sim *providersim.Server) {
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
	return newTestBroker(t, open(), replicaOpts(clk)...), newTestBroker(t, open(), replicaOpts(clk)...), sim
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
