package notice

import (
	"context"
	"runtime"
	"testing"

	"github.com/rotavault/rotavault/store/memstore"
)

// An idle watch holds memory for what it is sent, not for the notices it
// could fall behind by: 10,000 idle watchers on one replica must not cost
// 10,000 × 256 notice slots (about 400 MB as channels).
func TestIdleSubscriptionsHoldLittleMemory(t *testing.T) {
	ctx := context.Background()
	r := newReplica(t, memstore.New())
	const subs = 1000
	held := make([]*Subscription, 0, subs)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range subs {
		s, err := r.Subscribe(ctx, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, s)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perSub := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / subs
	if perSub > 4<<10 {
		t.Fatalf("an idle subscription holds %d bytes, want at most 4 KiB", perSub)
	}
	t.Logf("an idle subscription holds about %d bytes", perSub)

	// They still receive what comes, each its own copy.
	r.notify(ctx, numberedNotice(0))
	for _, s := range held {
		if n := next(t, s); n.FamilyID != "f0" {
			t.Fatalf("got %+v", n)
		}
		s.Close()
	}
}
