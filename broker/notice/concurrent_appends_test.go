package notice

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/memstore"
)

// gatedHeadStore holds the first write of the log's head until released
// and counts the head's writes.
type gatedHeadStore struct {
	store.Store
	gate       chan struct{}
	gated      atomic.Bool
	headWrites atomic.Int64
}

func (s *gatedHeadStore) Put(ctx context.Context, key string, value []byte, expected uint64) (uint64, error) {
	if key == HeadKey {
		if s.gated.CompareAndSwap(false, true) {
			<-s.gate
		}
		s.headWrites.Add(1)
	}
	return s.Store.Put(ctx, key, value, expected)
}

// An onboarding wave appends many notices at once on one replica. They must
// share head writes instead of each paying for its own and for the
// conflicts with all the others — and still reach every watcher, here and
// on another replica, once each and in one order.
func TestConcurrentAppendsShareHeadWrites(t *testing.T) {
	ctx := context.Background()
	mem := memstore.New()
	here := newReplica(t, mem)
	there := newReplica(t, mem, withPoll(20*time.Millisecond))
	hereSub, err := here.Subscribe(ctx, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	thereSub, err := there.Subscribe(ctx, nil, "")
	if err != nil {
		t.Fatal(err)
	}

	// Swap in the gated store after Init wrote the head.
	gated := &gatedHeadStore{Store: mem, gate: make(chan struct{})}
	here.notices.store = gated

	const appends = 64
	var wg sync.WaitGroup
	for i := range appends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := here.notices.Append(ctx, numberedNotice(i)); err != nil {
				t.Error(err)
			}
		}()
	}
	// While the first append's head write is held, the other 63 queue in
	// groups of at most recentNotices.
	poll.Until(t, 10*time.Second, "63 appends queued behind the first", func() bool {
		here.notices.amu.Lock()
		defer here.notices.amu.Unlock()
		queued := 0
		for _, g := range here.notices.waiting {
			queued += len(g.notices)
		}
		return queued == appends-1
	})
	close(gated.gate)
	wg.Wait()

	// 1 + ⌈63/32⌉ groups, one head write each (no other writer: no conflict).
	if got := gated.headWrites.Load(); got != 3 {
		t.Fatalf("%d appends wrote the head %d times, want 3 (one per group)", appends, got)
	}
	for name, sub := range map[string]*Subscription{"this replica": hereSub, "another replica": thereSub} {
		seen := make(map[string]bool)
		var last uint64
		for range appends {
			n := next(t, sub)
			if seen[n.FamilyID] {
				t.Fatalf("%s: %s delivered twice", name, n.FamilyID)
			}
			seen[n.FamilyID] = true
			if n.seq <= last {
				t.Fatalf("%s: notice %d after %d", name, n.seq, last)
			}
			last = n.seq
		}
	}
	if n := len(pagedNotices(t, mem)); n != appends {
		t.Fatalf("%d notices in pages, want %d", n, appends)
	}
}
