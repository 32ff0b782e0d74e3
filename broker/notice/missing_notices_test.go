package notice

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/memstore"
)

// failingPageWrites fails every write of a notice page while failing is set.
type failingPageWrites struct {
	store.Store
	failing atomic.Bool
}

func (s *failingPageWrites) Put(ctx context.Context, key string, value []byte, expectedVersion uint64) (uint64, error) {
	if s.failing.Load() && strings.HasPrefix(key, noticePagesPrefix) {
		return 0, errStoreDown
	}
	return s.Store.Put(ctx, key, value, expectedVersion)
}

// A notice's page is its only copy beyond the head, so a failed page write
// leaves every notice of it (a group's, up to 32) in no record a follower
// more than 32 behind can read. The follower waits missingNoticeWait for a
// reserved notice before skipping it, and the wait counts from when the
// head first showed it reserved: notices reserved together are skipped
// after one wait, not one wait each in turn (10 × 5 s here, 32 × 5 s for a
// group), during which the follower delivers nothing after them.
func TestFollowerSkipsNoticesMissingTogetherAfterOneWait(t *testing.T) {
	ctx := context.Background()
	mem := memstore.New()
	pages := &failingPageWrites{Store: mem}
	a := newReplica(t, pages)
	clock := fakeclock.New(time.Now())
	b := New(mem, Options{Retention: 10000, Buffer: 256, Poll: time.Hour}, clock.Now, slog.New(slog.DiscardHandler))
	if err := b.Init(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	sub, err := b.Subscribe(ctx, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	const lost, appended = 10, 50
	pages.failing.Store(true)
	for i := range lost {
		a.notify(ctx, numberedNotice(i))
	}
	pages.failing.Store(false)
	for i := lost; i < appended; i++ {
		a.notify(ctx, numberedNotice(i))
	}
	follow := func() {
		t.Helper()
		if err := b.catchUp(ctx, func(context.Context, Notice) {}); err != nil {
			t.Fatal(err)
		}
	}
	follow() // the first lost notice is missing: b waits
	if d := b.Delivered(); d != 0 {
		t.Fatalf("delivered through %d before the wait, want 0", d)
	}
	clock.Add(missingNoticeWait)
	for range lost {
		follow()
	}
	if d := b.Delivered(); d != appended {
		t.Fatalf("one wait after %d notices were lost together, delivered through %d of %d", lost, d, appended)
	}
	for i := lost; i < appended; i++ {
		if n := next(t, sub); n.FamilyID != fmt.Sprintf("f%d", i) {
			t.Fatalf("got %s, want f%d", n.FamilyID, i)
		}
	}
}
