package broker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rotavault/rotavault/store/memstore"
)

// Two replicas on one store. B polls rarely, so it learns of A's notice only
// when its own append finds the gap below it: its watcher still gets both,
// in log order, without waiting for a poll.
func TestLocalNoticeWaitsForAnotherReplicasEarlierOne(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	a := newTestBroker(t, st, WithNoticePollInterval(time.Minute))
	b := newTestBroker(t, st, WithNoticePollInterval(time.Minute))
	sub, err := b.Subscribe(ctx, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	a.notify(ctx, notice(1))
	b.notify(ctx, notice(2))

	first, second := next(t, sub), next(t, sub)
	if first.FamilyID != "f1" || second.FamilyID != "f2" {
		t.Fatalf("B's watcher got %s then %s, want f1 then f2", first.FamilyID, second.FamilyID)
	}
}

// A replica delivers another's notices by following the log, and a watcher
// that moves between them with its cursor gets each once.
func TestFollowerDeliversOtherReplicasNotices(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	a := newTestBroker(t, st, WithNoticePollInterval(10*time.Millisecond))
	b := newTestBroker(t, st, WithNoticePollInterval(10*time.Millisecond))
	onB, err := b.Subscribe(ctx, []string{"c1"}, "")
	if err != nil {
		t.Fatal(err)
	}
	defer onB.Close()
	for i := range 6 {
		a.notify(ctx, notice(i))
	}
	var cursor string
	for _, want := range []string{"f1", "f3"} {
		n := next(t, onB)
		if n.FamilyID != want {
			t.Fatalf("got %s, want %s", n.FamilyID, want)
		}
		cursor = n.Cursor
	}
	// Resume on A after f3: only f5 follows.
	onA, err := a.Subscribe(ctx, []string{"c1"}, cursor)
	if err != nil {
		t.Fatal(err)
	}
	defer onA.Close()
	if n := next(t, onA); n.FamilyID != "f5" {
		t.Fatalf("resumed with %s, want f5", n.FamilyID)
	}
}

// A replica that could not read the log while more notices than it keeps
// went by cannot give them to its watchers: it ends their streams with
// ErrCursorExpired, so they resynchronise, instead of skipping notices.
func TestFollowerBehindRetentionEndsWatches(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	a := newTestBroker(t, st, WithNoticeRetention(3), WithNoticePollInterval(time.Minute))
	b := newTestBroker(t, st, WithNoticeRetention(3), WithNoticePollInterval(time.Minute))
	sub, err := b.Subscribe(ctx, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for i := range recentNotices + 5 {
		a.notify(ctx, notice(i))
	}
	b.notices.wake()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if n, err := sub.Next(wctx); !errors.Is(err, ErrCursorExpired) {
		t.Fatalf("watch on the lagging replica: %+v, %v; want ErrCursorExpired", n, err)
	}
}
