package notice

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/internal/jsonrec"
	"github.com/rotavault/rotavault/store/memstore"
)

// Two replicas on one store. B polls rarely, so it learns of A's notice only
// when its own append finds the gap below it: its watcher still gets both,
// in log order, without waiting for a poll.
func TestLocalNoticeWaitsForAnotherReplicasEarlierOne(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	a := newReplica(t, st, withPoll(time.Minute))
	b := newReplica(t, st, withPoll(time.Minute))
	sub, err := b.Subscribe(ctx, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	a.notify(ctx, numberedNotice(1))
	b.notify(ctx, numberedNotice(2))

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
	a := newReplica(t, st, withPoll(10*time.Millisecond))
	b := newReplica(t, st, withPoll(10*time.Millisecond))
	onB, err := b.Subscribe(ctx, []string{"c1"}, "")
	if err != nil {
		t.Fatal(err)
	}
	defer onB.Close()
	for i := range 6 {
		a.notify(ctx, numberedNotice(i))
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
	a := newReplica(t, st, withRetention(3), withPoll(time.Minute))
	b := newReplica(t, st, withRetention(3), withPoll(time.Minute))
	sub, err := b.Subscribe(ctx, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for i := range recentNotices + 5 {
		a.notify(ctx, numberedNotice(i))
	}
	b.notices.wake()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if n, err := sub.Next(wctx); !errors.Is(err, ErrCursorExpired) {
		t.Fatalf("watch on the lagging replica: %+v, %v; want ErrCursorExpired", n, err)
	}
}

// Cursors are sealed under the log's key: the same notice has the same
// cursor on every replica, a watcher cannot read sequence numbers out of
// them (and so cannot count other credentials' notices between its own),
// and a log written before cursors were sealed gets a key on start, its old
// cursors answered with ErrCursorExpired rather than misread.
func TestCursorsAreSealedAndSharedByReplicas(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	// A log as an earlier version left it: no cursor key.
	raw, err := jsonrec.Encode(noticeLogMeta{Format: jsonrec.Format, Epoch: "0011223344556677", NextSeq: 8, OldestSeq: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(ctx, HeadKey, raw, 0); err != nil {
		t.Fatal(err)
	}
	a := newReplica(t, st, withPoll(10*time.Millisecond))
	b := newReplica(t, st, withPoll(10*time.Millisecond))
	onA, err := a.Subscribe(ctx, []string{"c1"}, "")
	if err != nil {
		t.Fatal(err)
	}
	defer onA.Close()
	onB, err := b.Subscribe(ctx, []string{"c1"}, "")
	if err != nil {
		t.Fatal(err)
	}
	defer onB.Close()
	for i := range 4 {
		a.notify(ctx, numberedNotice(i))
	}
	fromA, fromB := next(t, onA), next(t, onB)
	if fromA.Cursor != fromB.Cursor {
		t.Fatalf("one notice, two cursors: %q on A, %q on B", fromA.Cursor, fromB.Cursor)
	}
	body, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(fromA.Cursor, cursorPrefix))
	if err != nil || len(body) != 16 {
		t.Fatalf("cursor %q: %v", fromA.Cursor, err)
	}
	var plain [16]byte
	binary.BigEndian.PutUint64(plain[:8], fromA.seq)
	if string(body) == string(plain[:]) || strings.Contains(string(body), string(plain[:8])) {
		t.Fatalf("cursor %q carries its sequence number %d in the clear", fromA.Cursor, fromA.seq)
	}
	// The next notice of c1 comes two sequence numbers later; its cursor
	// must not say so.
	second := next(t, onA)
	if len(second.Cursor) != len(fromA.Cursor) {
		t.Fatalf("cursor lengths differ: %q %q", fromA.Cursor, second.Cursor)
	}
	resumed, err := b.Subscribe(ctx, []string{"c1"}, fromA.Cursor)
	if err != nil {
		t.Fatal(err)
	}
	defer resumed.Close()
	if n := next(t, resumed); n.FamilyID != second.FamilyID {
		t.Fatalf("resumed on B with %s, want %s", n.FamilyID, second.FamilyID)
	}
	old := base64.RawURLEncoding.EncodeToString([]byte("1.0011223344556677.3"))
	if _, err := a.Subscribe(ctx, nil, old); !errors.Is(err, ErrCursorExpired) {
		t.Fatalf("a cursor of the old format: %v, want ErrCursorExpired", err)
	}
}
