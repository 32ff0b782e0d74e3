package broker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/catalog"
	"github.com/rotavault/rotavault/broker/internal/lease"
	"github.com/rotavault/rotavault/store/memstore"
)

// A batch still in its inbox keeps its mark in the records it was merged
// into, however many batches were merged into them since: a replica that
// reads it afresh (another replica's FlushIssuance, a new holder) must not
// merge it twice. Here a credential whose new consumers come every flush
// is merged from more batches than the newest marks a record keeps, while
// the first batch waits for another credential's merge point.
func TestConsumerInboxBatchStillListedKeepsItsMark(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	holder := newTestBroker(t, st) // alone: holds every shard
	busy, waiting := "busy", ""
	for i := 0; waiting == ""; i++ {
		if id := fmt.Sprintf("waiting-%d", i); lease.ShardOf(id) == lease.ShardOf(busy) {
			waiting = id
		}
	}
	for _, id := range []string{busy, waiting} {
		if _, err := holder.Credentials().Create(ctx, id, catalogSpec()); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	flush := func(uses ...catalog.Use) {
		t.Helper()
		if left, err := holder.Catalog().Record(ctx, uses); len(left) != 0 || err != nil {
			t.Fatalf("Record: %d back, %v", len(left), err)
		}
		if err := holder.Catalog().MergeInboxes(ctx, time.Minute, now, false); err != nil {
			t.Fatalf("MergeInboxes: %v", err)
		}
	}
	flush(use(waiting, "svc", now, now, 1)) // known to the holder from now on
	flush(use(busy, "pod-0", now, now, 1), use(waiting, "svc", now, now, 1))
	for i := 1; i <= 200; i++ { // waiting's merge point does not come
		flush(use(busy, fmt.Sprintf("pod-%d", i), now, now, 1))
	}
	if err := newTestBroker(t, st).Catalog().MergeInboxes(ctx, time.Minute, now, true); err != nil {
		t.Fatal(err)
	}
	got := listAll(ctx, t, holder, busy)
	if len(got) != 201 {
		t.Fatalf("%d consumers of %s, want 201", len(got), busy)
	}
	for k, c := range got {
		if c.Count != 1 {
			t.Fatalf("%s: %d tokens, want 1", k, c.Count)
		}
	}
	if got := listAll(ctx, t, holder, waiting)[waiting+" svc"].Count; got != 2 {
		t.Fatalf("%s: %d tokens, want 2", waiting, got)
	}
}
