package vaultstore_test

import (
	"slices"
	"testing"
	"time"

	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/vaultstore"
)

// In a hinted folder another replica's creations and deletions show as
// soon as they are hinted, and a page never waits for a LIST once the
// folder has a listing, however old: the folder's first List builds the
// listing, and later LISTs run in the background every HintedListRefresh,
// the safety net for a change no hint told of.
func TestListPageOfAHintedFolderShowsHintsAtOnceAndNeverWaitsForALIST(t *testing.T) {
	srv := vaulttest.StartDev(t)
	client, counter := srv.CountingClient(t)
	const hintedRefresh = 10 * time.Minute
	clock := fakeclock.New(time.Now())
	other := newStore(t, vaultstore.Config{Client: srv.Client(t), Prefix: "rotavault/hinted"})
	s := newStore(t, vaultstore.Config{Client: client, Prefix: "rotavault/hinted", HintedListRefresh: hintedRefresh, Now: clock.Now})
	ctx := t.Context()
	hint := s.ListingHints("c/")
	put := func(key string) {
		t.Helper()
		if _, err := other.Put(ctx, key, []byte("v"), 0); err != nil {
			t.Fatal(err)
		}
	}
	lists := func(what string, want int64) {
		t.Helper()
		if got := counter.Count("LIST metadata"); got != want {
			t.Fatalf("%s: %d LIST requests in all, want %d", what, got, want)
		}
	}
	want := func(what string, keys ...string) {
		t.Helper()
		if got := pageAll(t, s, "c/", 2); !slices.Equal(got, keys) {
			t.Fatalf("%s: pages %q, want %q", what, got, keys)
		}
	}
	put("c/k1")
	if keys, err := s.List(ctx, "c/"); err != nil || !slices.Equal(keys, []string{"c/k1"}) {
		t.Fatalf("List: %q, %v", keys, err)
	}
	want("the first pages, from the listing List built", "c/k1")
	lists("the first List and pages", 1)

	put("c/k2")
	if err := other.Delete(ctx, "c/k1"); err != nil {
		t.Fatal(err)
	}
	hint("c/k2", true)
	hint("c/k1", false)
	hint("d/k9", true) // another folder's: ignored
	want("the other replica's changes, once hinted", "c/k2")

	clock.Add(time.Hour) // past ListRefresh and half of HintedListRefresh
	put("c/k3")          // never hinted
	want("past every refresh period the page is served at once", "c/k2")
	poll.Until(t, 10*time.Second, "the background LIST, the safety net", func() bool {
		keys, _, err := s.ListPage(ctx, "c/", "", 10)
		return err == nil && slices.Equal(keys, []string{"c/k2", "c/k3"})
	})
	lists("after the safety net", 2)
}
