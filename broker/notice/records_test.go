package notice

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/store/memstore"
)

// A notice's page is its only copy beyond the head: a replica that falls
// more than the head's 32 notices behind reads the rest from their pages
// (one read per 100 notices), not a record per notice, and no notice gets
// a record of its own — two store writes less per notice (the record and
// its deletion at retention). Notices for replicas only are paged too.
func TestFollowerFarBehindReadsNoticesFromPages(t *testing.T) {
	ctx := context.Background()
	mem := memstore.New()
	a := newReplica(t, mem)
	counted := &faultStore{Store: mem}
	var recordReads, pageReads atomic.Int64
	counted.inject(&readFault{op: "get", prefix: recordPrefix, match: func(string, []byte) bool { recordReads.Add(1); return false }})
	counted.inject(&readFault{op: "get", prefix: noticePagesPrefix, match: func(string, []byte) bool { pageReads.Add(1); return false }})
	// b reads the head only when told to: it falls behind a's 100.
	b := newReplica(t, counted, withPoll(time.Hour))
	sub, err := b.Subscribe(ctx, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	const appended = 100
	for i := range appended {
		a.notify(ctx, numberedNotice(i))
		if i%10 == 0 {
			a.notify(ctx, Notice{CredentialID: fmt.Sprintf("new-%d", i), Kind: CredentialCreated, DetectedAt: time.Unix(int64(i), 0)})
		}
	}
	// b's own notice finds the gap below it and makes b follow at once.
	b.notify(ctx, numberedNotice(appended))
	for i := range appended + 1 {
		if n := next(t, sub); n.FamilyID != fmt.Sprintf("f%d", i) {
			t.Fatalf("notice %d: got %s", i, n.FamilyID)
		}
	}
	if n := recordReads.Load(); n != 0 {
		t.Fatalf("the follower read %d notice records, want 0 (pages)", n)
	}
	if n := pageReads.Load(); n == 0 || n > 2 {
		t.Fatalf("the follower read %d pages for %d notices, want 1 or 2", n, appended+appended/10-recentNotices)
	}
	if keys, _ := mem.List(ctx, recordPrefix); len(keys) != 0 {
		t.Fatalf("%d notices have a record of their own, want none", len(keys))
	}
	created := 0
	for _, n := range pagedNotices(t, mem) {
		if n.Kind == CredentialCreated {
			created++
		}
	}
	if created != appended/10 {
		t.Fatalf("%d credential creations in pages, want %d", created, appended/10)
	}
}

// With Options.Records the log is kept as versions before 2026-12-06 read
// it during a rolling upgrade: every notice has a record of its own, and
// pages hold only the notices for watchers (their replays deliver a page's
// notices whatever the kind).
func TestRecordsOptionKeepsTheLogAsEarlierVersionsReadIt(t *testing.T) {
	ctx := context.Background()
	mem := memstore.New()
	a := newReplica(t, mem, withRecords())
	for i := range 3 {
		a.notify(ctx, numberedNotice(i))
	}
	a.notify(ctx, Notice{CredentialID: "new", Kind: CredentialCreated, DetectedAt: time.Unix(1, 0)})
	if keys, _ := mem.List(ctx, recordPrefix); len(keys) != 4 {
		t.Fatalf("%d notice records, want 4", len(keys))
	}
	for seq, n := range pagedNotices(t, mem) {
		if !n.Kind.ForWatchers() {
			t.Fatalf("notice %d of kind %v in a page, which earlier versions would replay to watchers", seq, n.Kind)
		}
	}
}

// Records an earlier version (or a replica with Options.Records) wrote are
// deleted as they fall out of retention, once the records stop: none is
// left behind for good.
func TestRecordsLeftByAnEarlierVersionArePrunedWithRetention(t *testing.T) {
	ctx := context.Background()
	mem := memstore.New()
	old := newReplica(t, mem, withRecords(), withRetention(3))
	for i := range 5 {
		old.notify(ctx, numberedNotice(i))
	}
	if keys, _ := mem.List(ctx, recordPrefix); len(keys) != 3 {
		t.Fatalf("%d records kept with a retention of 3", len(keys))
	}
	// An earlier version rewrote the head last: it drops the fields it
	// does not know.
	rewriteHeadAsEarlierVersion(t, mem, func(*noticeLogMeta) {})
	old.stop()

	now := newReplica(t, mem, withRetention(3))
	for i := 5; i < 10; i++ {
		now.notify(ctx, numberedNotice(i))
	}
	if keys, _ := mem.List(ctx, recordPrefix); len(keys) != 0 {
		t.Fatalf("records left after they fell out of retention: %v", keys)
	}
}
