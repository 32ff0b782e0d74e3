package audit

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/store"
)

// headWrites counts the writes of the anchored head.
type headWrites struct {
	store.Store
	n atomic.Int64
}

func (h *headWrites) Put(ctx context.Context, key string, value []byte, expected uint64) (uint64, error) {
	if key == DefaultHeadKey {
		h.n.Add(1)
	}
	return h.Store.Put(ctx, key, value, expected)
}

// The README: later anchors are written in the background "at most once a
// second (audit.DefaultAnchorInterval)", so that a rotation on Vault costs
// two Vault writes, not three. With an interval longer than the test, the
// records after the first background anchor write no head until Close
// anchors the last one: the head written at Open, once in the background,
// once at Close.
func TestBackgroundAnchorsAreWrittenAtMostOncePerInterval(t *testing.T) {
	if DefaultAnchorInterval != time.Second {
		t.Errorf("DefaultAnchorInterval is %s; the README says once a second", DefaultAnchorInterval)
	}
	cfg := newConfig(t)
	writes := &headWrites{Store: cfg.Store}
	cfg.Store, cfg.AnchorInterval = writes, time.Hour
	l := openLog(t, cfg)
	record := func(i int) {
		t.Helper()
		if err := l.Record(context.Background(), testEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
	record(1)
	poll.UntilSeen(t, 10*time.Second, "the background anchor", func() (bool, string) {
		_, anchored := l.Head()
		return anchored >= 1, fmt.Sprint("anchored at ", anchored)
	})
	for i := 2; i <= 50; i++ {
		record(i)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if n := writes.n.Load(); n != 3 {
		t.Errorf("the head was written %d times for 50 records within one interval, want 3 (open, once in the background, close)", n)
	}
	if last, anchored := l.Head(); anchored != last.Seq || last.Seq != 50 {
		t.Errorf("after Close: head %d anchored at %d, want both 50", last.Seq, anchored)
	}
}
