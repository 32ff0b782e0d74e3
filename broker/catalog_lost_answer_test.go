package broker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/catalog"
	"github.com/rotavault/rotavault/store/memstore"
)

// errLostAnswer is a write's answer lost after the store applied it.
var errLostAnswer = errors.New("faultstore: answer lost after the write was applied")

// countAfterLostAnswer records u with lost injected into st, checks that
// the fault was met, and returns the count b then lists for u's pair.
func countAfterLostAnswer(ctx context.Context, t *testing.T, st *faultStore, b *Broker, lost *fault, u catalog.Use) uint64 {
	t.Helper()
	st.inject(lost)
	record(ctx, t, b, []catalog.Use{u})
	if lost.hits.Load() == 0 {
		t.Fatalf("no write under %s was reported failed", lost.prefix)
	}
	return listAll(ctx, t, b, u.CredentialID)[u.CredentialID+" "+u.Identity].Count
}

// A catalog write that landed but reported an error is recognised, not
// handed back for the next flush to merge a second time.
func TestConsumerCatalogFailedWriteThatLandedIsNotMergedTwice(t *testing.T) {
	ctx := context.Background()
	st := &faultStore{Store: memstore.New()}
	b := newTestBroker(t, st)
	if _, err := b.Credentials().Create(ctx, "acme", catalogSpec()); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	record(ctx, t, b, []catalog.Use{use("acme", "svc", now, now, 2)})
	lost := &fault{op: "put", prefix: catalog.KeyPrefix, once: true, lose: errLostAnswer}
	if c := countAfterLostAnswer(ctx, t, st, b, lost, use("acme", "svc", now, now, 3)); c != 5 {
		t.Fatalf("count %d after a write whose answer was lost, want 5", c)
	}
}

// An inbox batch whose creation landed but reported an error is found by
// its fresh name, not handed back for the next flush to write again.
func TestConsumerInboxBatchWhoseAnswerWasLostIsNotWrittenTwice(t *testing.T) {
	ctx := context.Background()
	st := &faultStore{Store: memstore.New()}
	b := newTestBroker(t, st) // shares its store: uses go to inboxes
	if _, err := b.Credentials().Create(ctx, "acme", catalogSpec()); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	lost := &fault{op: "put", prefix: catalog.InboxPrefix, once: true, lose: errLostAnswer}
	if c := countAfterLostAnswer(ctx, t, st, b, lost, use("acme", "svc", now, now, 3)); c != 3 {
		t.Fatalf("count %d after an inbox write whose answer was lost, want 3", c)
	}
}

// An inbox batch whose creation landed but reported an error, and which a
// holder merged and deleted before the writer read it back, is recognised
// by its mark in the catalog record, not sent again and counted twice.
func TestConsumerInboxBatchMergedBeforeItsReadBackIsNotWrittenTwice(t *testing.T) {
	ctx := context.Background()
	st := &faultStore{Store: memstore.New()}
	b := newTestBroker(t, st)      // the writer
	holder := newTestBroker(t, st) // another replica, merging the inboxes
	if _, err := b.Credentials().Create(ctx, "acme", catalogSpec()); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	lost := &fault{op: "put", prefix: catalog.InboxPrefix, once: true,
		after: func(_ string, _ []byte, _, version uint64, err error) (uint64, error) {
			if err != nil {
				return version, err
			}
			mergeAll(ctx, t, holder) // merged and deleted before the writer reads it back
			return 0, errLostAnswer
		}}
	if c := countAfterLostAnswer(ctx, t, st, b, lost, use("acme", "svc", now, now, 3)); c != 3 {
		t.Fatalf("count %d after an inbox write whose answer was lost and whose batch was merged at once, want 3", c)
	}
}
