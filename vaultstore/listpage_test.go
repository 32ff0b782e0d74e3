package vaultstore_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/storetest"
	"github.com/rotavault/rotavault/vaultstore"
)

func pageAll(t *testing.T, s store.Store, prefix string, limit int) []string {
	t.Helper()
	var all []string
	after := ""
	for {
		keys, more, err := s.ListPage(t.Context(), prefix, after, limit)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, keys...)
		if !more {
			return all
		}
		after = keys[len(keys)-1]
	}
}

// Paging through a folder of 1,000 keys, 10 at a time, lists the folder in
// Vault once, not once per page.
func TestListPageListsVaultOncePerRefresh(t *testing.T) {
	srv := vaulttest.StartDev(t)
	client, counter := srv.CountingClient(t)
	clock := fakeclock.New(time.Now())
	s := newStore(t, vaultstore.Config{Client: client, Prefix: "rotavault/paging", Now: clock.Now})
	const n = 1000
	err := storetest.Seed(t.Context(), s, n, func(i int) ([]store.Record, error) {
		return []store.Record{{Key: fmt.Sprintf("f/k%04d", i), Value: []byte("v")}}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want, err := s.List(t.Context(), "f/")
	if err != nil {
		t.Fatal(err)
	}
	before := counter.Count("LIST metadata")
	got := pageAll(t, s, "f/", 10)
	if lists := counter.Count("LIST metadata") - before; lists != 1 {
		t.Errorf("%d LIST requests for %d pages, want 1", lists, n/10)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("pages joined: %d keys, want List's %d", len(got), len(want))
	}
	// Past the refresh period the next page lists the folder again, once.
	clock.Add(vaultstore.DefaultListRefresh)
	before = counter.Count("LIST metadata")
	if got := pageAll(t, s, "f/", 100); !slices.Equal(got, want) {
		t.Fatalf("after the refresh period: %d keys", len(got))
	}
	if lists := counter.Count("LIST metadata") - before; lists != 1 {
		t.Errorf("after the refresh period: %d LIST requests, want 1", lists)
	}
}

// Another replica's creations and deletions show in this replica's pages
// within ListRefresh: in the background from half of it on, at the latest
// at the first page after it; this replica's own writes show at once.
func TestListPageShowsAnotherReplicasWritesWithinListRefresh(t *testing.T) {
	srv := vaulttest.StartDev(t)
	const refresh = time.Minute
	clock := fakeclock.New(time.Now())
	other := newStore(t, vaultstore.Config{Client: srv.Client(t), Prefix: "rotavault/lag"})
	s := newStore(t, vaultstore.Config{Client: srv.Client(t), Prefix: "rotavault/lag", ListRefresh: refresh, Now: clock.Now})
	ctx := t.Context()
	put := func(st store.Store, key string) {
		t.Helper()
		if _, err := st.Put(ctx, key, []byte("v"), 0); err != nil {
			t.Fatal(err)
		}
	}
	want := func(what string, keys ...string) {
		t.Helper()
		if got := pageAll(t, s, "c/", 2); !slices.Equal(got, keys) {
			t.Fatalf("%s: pages %q, want %q", what, got, keys)
		}
	}
	put(other, "c/k1")
	want("first page", "c/k1")

	put(other, "c/k2")
	if err := other.Delete(ctx, "c/k1"); err != nil {
		t.Fatal(err)
	}
	put(s, "c/k3")
	want("within the refresh period: the other replica's writes not yet, its own at once", "c/k1", "c/k3")

	clock.Add(refresh / 2)
	want("at half the period the page is served as it was", "c/k1", "c/k3")
	poll.Until(t, 10*time.Second, "the background listing", func() bool {
		keys, _, err := s.ListPage(ctx, "c/", "", 10)
		return err == nil && slices.Equal(keys, []string{"c/k2", "c/k3"})
	})

	put(other, "c/k4")
	if err := s.Delete(ctx, "c/k3"); err != nil {
		t.Fatal(err)
	}
	want("its own deletion at once", "c/k2")
	clock.Add(refresh)
	want("past the period the page waits for a listing", "c/k2", "c/k4")
}
