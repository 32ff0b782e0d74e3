package broker

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/memstore"
)

// lostAnswerStore applies the next catalog write and then reports it failed,
// as a store client does when the answer is lost after the store applied
// the write (a timeout, a reset): not a conflict, an error.
type lostAnswerStore struct {
	store.Store
	loseNext atomic.Bool
}

func (s *lostAnswerStore) Put(ctx context.Context, key string, value []byte, expected uint64) (uint64, error) {
	v, err := s.Store.Put(ctx, key, value, expected)
	if err == nil && strings.HasPrefix(key, consumersPrefix) && s.loseNext.CompareAndSwap(true, false) {
		return 0, errors.New("lostanswerstore: answer lost after the write was applied")
	}
	return v, err
}

// A catalog write that landed but reported an error is recognised, not
// handed back for the next flush to merge a second time.
func TestConsumerCatalogFailedWriteThatLandedIsNotMergedTwice(t *testing.T) {
	ctx := context.Background()
	st := &lostAnswerStore{Store: memstore.New()}
	b := newTestBroker(t, st)
	if _, err := b.CreateCredential(ctx, "acme", catalogSpec()); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	record(ctx, t, b, []ConsumerUse{use("acme", "svc", now, now, 2)})
	st.loseNext.Store(true)
	record(ctx, t, b, []ConsumerUse{use("acme", "svc", now, now, 3)})
	if st.loseNext.Load() {
		t.Fatal("no catalog write was reported failed")
	}
	if c := listAll(ctx, t, b, "acme")["acme svc"]; c.Count != 5 {
		t.Fatalf("count %d after a write whose answer was lost, want 5", c.Count)
	}
}
