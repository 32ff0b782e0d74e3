package notice

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/store/memstore"
)

func numberedNotice(i int) Notice {
	return Notice{CredentialID: fmt.Sprintf("c%d", i%2), FamilyID: fmt.Sprintf("f%d", i), Kind: FamilyRevoked, Reason: ReasonCredentialDeleted, DetectedAt: time.Unix(int64(i), 0)}
}

func next(t *testing.T, s *Subscription) Notice {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := s.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestNoticeLogReplaysAfterCursorWithinRetention(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	b := newReplica(t, st, withRetention(3))
	var cursors []string
	live, err := b.Subscribe(ctx, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		b.notify(ctx, numberedNotice(i))
		cursors = append(cursors, next(t, live).Cursor)
	}

	// Notices 3 and 4 (0-based) follow cursor 2 and are retained.
	s, err := b.Subscribe(ctx, nil, cursors[2])
	if err != nil {
		t.Fatal(err)
	}
	if n := next(t, s); n.FamilyID != "f3" || n.Cursor != cursors[3] {
		t.Fatalf("replay started with %+v", n)
	}
	if n := next(t, s); n.FamilyID != "f4" {
		t.Fatalf("then %+v", n)
	}
	// Only the last 3 are kept: resuming after notice 0 would skip notice 1.
	if _, err := b.Subscribe(ctx, nil, cursors[0]); !errors.Is(err, ErrCursorExpired) {
		t.Fatalf("cursor beyond retention: %v, want ErrCursorExpired", err)
	}
	if keys, _ := st.List(ctx, recordPrefix); len(keys) != 0 {
		t.Fatalf("%d notices have a record of their own, want none (their pages hold them)", len(keys))
	}

	// Another log's cursors (a restored or different store) are refused.
	other := newReplica(t, memstore.New())
	if _, err := other.Subscribe(ctx, nil, cursors[4]); !errors.Is(err, ErrCursorExpired) {
		t.Fatalf("foreign cursor: %v", err)
	}
	var inv *brokererr.InvalidArgumentError
	if _, err := b.Subscribe(ctx, nil, "not-a-cursor"); !errors.As(err, &inv) {
		t.Fatalf("malformed cursor: %v", err)
	}
}

func TestNoticeLogSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	b := newReplica(t, st)
	s, err := b.Subscribe(ctx, []string{"c1"}, "")
	if err != nil {
		t.Fatal(err)
	}
	start := s.StartCursor
	for i := range 4 {
		b.notify(ctx, numberedNotice(i))
	}
	_ = b.Close()

	b2 := newReplica(t, st)
	s2, err := b2.Subscribe(ctx, []string{"c1"}, start)
	if err != nil {
		t.Fatal(err)
	}
	if a, c := next(t, s2), next(t, s2); a.FamilyID != "f1" || c.FamilyID != "f3" {
		t.Fatalf("replay after restart: %s, %s; want f1, f3 (credential c1 only)", a.FamilyID, c.FamilyID)
	}
	b2.notify(ctx, numberedNotice(5))
	if n := next(t, s2); n.FamilyID != "f5" {
		t.Fatalf("live after replay: %s", n.FamilyID)
	}
}

func TestSlowSubscriberIsCutOffNotTheOthers(t *testing.T) {
	ctx := context.Background()
	b := newReplica(t, memstore.New())
	slow, err := b.Subscribe(ctx, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	fast, err := b.Subscribe(ctx, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	var last Notice
	for i := range b.opts.buffer + 1 {
		b.notify(ctx, numberedNotice(i))
		last = next(t, fast)
	}
	var got Notice
	var err2 error
	for {
		n, err := slow.Next(ctx)
		if err != nil {
			err2 = err
			break
		}
		got = n
	}
	if !errors.Is(err2, ErrSubscriberTooSlow) {
		t.Fatalf("slow subscriber ended with %v", err2)
	}
	// It resumes with the cursor of the last notice it got, missing nothing.
	resumed, err := b.Subscribe(ctx, nil, got.Cursor)
	if err != nil {
		t.Fatal(err)
	}
	var n Notice
	for n.Cursor != last.Cursor {
		n = next(t, resumed)
	}
	if b.SubscriberCount() != 2 {
		t.Fatalf("subscribers: %d, want fast and resumed", b.SubscriberCount())
	}
}
