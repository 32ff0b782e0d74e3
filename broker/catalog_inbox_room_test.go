package broker

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/catalog"
	"github.com/rotavault/rotavault/broker/internal/lease"
	"github.com/rotavault/rotavault/store/memstore"
)

// A flush carrying more than catalog.MaxInboxBatches batches' worth of uses
// for one shard (a fresh replica's first flush: every consumer is new)
// writes what its inbox has room for and returns only the rest, which goes
// once the holder has merged: refusing the whole shard would refuse it
// again at every flush, as the returned uses only grow.
func TestConsumerInboxTakesWhatFitsOfAFlushPastItsBound(t *testing.T) {
	ctx := context.Background()
	b := newTestBroker(t, memstore.New()) // shares its store: uses go to inboxes
	shard := lease.ShardOf("acme")
	var creds []string
	for i := 0; len(creds) < 10; i++ {
		if id := fmt.Sprintf("acme-%d", i); lease.ShardOf(id) == shard {
			creds = append(creds, id)
		}
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	long := strings.Repeat("x", catalog.MaxIdentityLen-100)
	var uses []catalog.Use
	for _, id := range creds {
		if _, err := b.Credentials().Create(ctx, id, catalogSpec()); err != nil {
			t.Fatal(err)
		}
		for j := range 40 { // 40 × 4 KB: fits a catalog record (192 KiB)
			uses = append(uses, use(id, fmt.Sprintf("spiffe://example.org/%d/%s", j, long), now, now, 1))
		}
	}
	left, err := b.Catalog().Record(ctx, uses)
	if len(left) == 0 || len(left) == len(uses) || err == nil {
		t.Fatalf("Record of %d uses (more than %d batches): %d back, %v; want the inbox filled and the rest back",
			len(uses), catalog.MaxInboxBatches, len(left), err)
	}
	if n := b.Stats().Catalog.InboxWrites; n != catalog.MaxInboxBatches {
		t.Fatalf("%d batches written, want the bound %d", n, catalog.MaxInboxBatches)
	}
	for range 10 {
		mergeAll(ctx, t, b)
		if len(left) == 0 {
			break
		}
		left, _ = b.Catalog().Record(ctx, left)
	}
	if len(left) != 0 {
		t.Fatalf("%d uses still back after 10 merges", len(left))
	}
	for _, id := range creds {
		got := listAll(ctx, t, b, id)
		if len(got) != 40 {
			t.Fatalf("%s: %d identities listed, want 40", id, len(got))
		}
		for k, c := range got {
			if c.Count != 1 {
				t.Fatalf("%s: %d tokens, want 1", k[:40], c.Count)
			}
		}
	}
}

// A use the inbox cannot encode (a time past year 9999, which JSON cannot
// write) comes back with an error, and the uses of the shards after its
// own are still written: none is lost.
func TestConsumerInboxUnencodableUseLosesNoOtherShard(t *testing.T) {
	ctx := context.Background()
	b := newTestBroker(t, memstore.New()) // shares its store: uses go to inboxes
	first, later := "", ""
	for i := 0; later == ""; i++ {
		id := fmt.Sprintf("c-%d", i)
		switch {
		case first == "":
			first = id
		case lease.ShardOf(id) > lease.ShardOf(first):
			later = id
		}
	}
	for _, id := range []string{first, later} {
		if _, err := b.Credentials().Create(ctx, id, catalogSpec()); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	far := time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	left, err := b.Catalog().Record(ctx, []catalog.Use{use(first, "svc", far, far, 1), use(later, "svc", now, now, 1)})
	if err == nil || len(left) != 1 || left[0].CredentialID != first {
		t.Fatalf("Record: %v back, %v; want %s's use back and an error", left, err, first)
	}
	mergeAll(ctx, t, b)
	if got := listAll(ctx, t, b, later); got[later+" svc"].Count != 1 {
		t.Fatalf("%s's use in a later shard: %v, want 1 token listed", later, got)
	}
}
