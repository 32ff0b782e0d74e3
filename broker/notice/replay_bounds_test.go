package notice

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/internal/jsonrec"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/store/memstore"
)

// appendNotices appends n notices, the i-th (0-based, sequence number i+1
// on a fresh log) for credential of(i).
func appendNotices(t *testing.T, b *replica, n int, of func(i int) string) {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		if err := b.notices.Append(ctx, Notice{CredentialID: of(i), FamilyID: fmt.Sprintf("f%d", i), Kind: FamilyRevoked, Reason: ReasonAdminRevoked}); err != nil {
			t.Fatal(err)
		}
	}
}

// cursorAt is the cursor of notice seq of b's log.
func cursorAt(b *replica, seq uint64) string { return b.notices.cursors.encode(seq) }

// drain reads want notices from s.
func drain(t *testing.T, s *Subscription, want int) []Notice {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out := make([]Notice, 0, want)
	for range want {
		n, err := s.Next(ctx)
		if err != nil {
			t.Fatalf("after %d of %d notices: %v", len(out), want, err)
		}
		out = append(out, n)
	}
	return out
}

// A replay from an old cursor used to read one store record per notice in
// range, the caller's or not: 1,404 reads to deliver nothing. It now reads
// the head and pages of 100 notices, and a watcher filtered to one
// credential reads that credential's index and only the pages holding its
// notices, whatever the other credentials did.
func TestReplayOfTheFullRetentionReadsAtMost200Records(t *testing.T) {
	const retention = 10_000
	const total = retention + 50
	lone := map[int]bool{1_234: true, 5_000: true, 8_765: true}
	st := &faultStore{Store: memstore.New()}
	// The follower's poll reads the head every interval: kept out of the
	// count.
	b := newReplica(t, st, withRetention(retention), withPoll(time.Minute))
	appendNotices(t, b, total, func(i int) string {
		if lone[i] {
			return "lone"
		}
		return fmt.Sprintf("busy-%02d", i%50)
	})
	b.notices.mu.Lock()
	oldest := b.notices.oldest
	b.notices.mu.Unlock()
	ctx := context.Background()

	t.Run("every credential", func(t *testing.T) {
		before := st.reads.Load()
		s, err := b.Subscribe(ctx, nil, cursorAt(b, oldest-1))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		got := drain(t, s, retention)
		reads := st.reads.Load() - before
		t.Logf("replay of %d notices: %d store reads", len(got), reads)
		if reads > 200 {
			t.Errorf("replaying the full retention took %d store reads, want at most 200", reads)
		}
		for i, n := range got {
			if want := fmt.Sprintf("f%d", int(oldest)-1+i); n.FamilyID != want {
				t.Fatalf("notice %d is %s, want %s: the replay lost the log's order", i, n.FamilyID, want)
			}
		}
	})

	t.Run("one credential", func(t *testing.T) {
		var mu sync.Mutex
		var pages []string
		defer st.inject(&readFault{op: "get", prefix: noticePagesPrefix, match: func(key string, _ []byte) bool {
			mu.Lock()
			defer mu.Unlock()
			pages = append(pages, key)
			return false
		}})()
		var want []string
		for i := range lone {
			want = append(want, noticePageKey(uint64(i+1)/noticePageSize))
		}
		before := st.reads.Load()
		s, err := b.Subscribe(ctx, []string{"lone"}, cursorAt(b, oldest-1))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		got := drain(t, s, len(lone))
		reads := st.reads.Load() - before
		t.Logf("filtered replay of %d notices: %d store reads, pages %v", len(got), reads, pages)
		for _, n := range got {
			if n.CredentialID != "lone" {
				t.Errorf("filtered replay delivered %s's notice", n.CredentialID)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		for _, p := range pages {
			if !slices.Contains(want, p) {
				t.Errorf("read page %s, which holds none of the watcher's notices (its pages: %v)", p, want)
			}
		}
		if reads > int64(2+len(lone)) {
			t.Errorf("filtered replay took %d store reads, want at most %d (head, index, one page per notice)", reads, 2+len(lone))
		}
	})
}

// At most two store-reading replays run per identity; a third is refused
// (RESOURCE_EXHAUSTED at the edge) until one ends. A resume from a cursor
// among the log's newest 32 notices — what every client does after the
// server's 30-minute GOAWAY — is no replay: it is served from memory,
// never refused, and reads nothing.
func TestReplaysFromTheStoreAreBoundedPerIdentity(t *testing.T) {
	st := &faultStore{Store: memstore.New()}
	b := newReplica(t, st)
	appendNotices(t, b, 300, func(i int) string { return fmt.Sprintf("c%d", i%3) })
	alice := audit.WithActor(context.Background(), "alice")
	old := cursorAt(b, 10)

	var held []*Subscription
	for range maxReplaysPerIdentity {
		s, err := b.Subscribe(alice, nil, old)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, s)
	}
	if _, err := b.Subscribe(alice, nil, old); !errors.Is(err, ErrTooManyReplays) {
		t.Fatalf("third replay for one identity: %v, want ErrTooManyReplays", err)
	}
	bob := audit.WithActor(context.Background(), "bob")
	if s, err := b.Subscribe(bob, nil, old); err != nil {
		t.Fatalf("another identity's replay: %v", err)
	} else {
		s.Close()
	}

	before := st.reads.Load()
	recent, err := b.Subscribe(alice, nil, cursorAt(b, 300-recentNotices))
	if err != nil {
		t.Fatalf("resume among the newest notices while two replays run: %v", err)
	}
	if got := drain(t, recent, recentNotices); got[0].FamilyID != fmt.Sprintf("f%d", 300-recentNotices) {
		t.Fatalf("recent resume began with %s", got[0].FamilyID)
	}
	recent.Close()
	if reads := st.reads.Load() - before; reads != 0 {
		t.Errorf("a resume among the newest %d notices read the store %d times, want 0", recentNotices, reads)
	}

	// A replay that ends — read to its end, or closed — frees its slot.
	drain(t, held[0], 290)
	held[1].Close()
	for range maxReplaysPerIdentity {
		s, err := b.Subscribe(alice, nil, old)
		if err != nil {
			t.Fatalf("after the replays ended: %v", err)
		}
		defer s.Close()
	}
}

// A log an earlier version wrote has no pages: a resume among the newest
// notices still works (the head repeats them), and one from further back
// is OUT_OF_RANGE, so the client resynchronises instead of missing
// notices.
func TestReplayOfALogWrittenBeforePagesIsServedOrOutOfRange(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	const written = 40
	meta := noticeLogMeta{Format: jsonrec.Format, Epoch: "0011223344556677", NextSeq: written + 1, OldestSeq: 1, CursorKey: newCursorKey()}
	for seq := uint64(1); seq <= written; seq++ {
		n := Notice{CredentialID: "c", FamilyID: fmt.Sprintf("f%d", seq), Kind: FamilyActivated}
		raw, err := jsonrec.Encode(n)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Put(ctx, noticeKey(seq), raw, 0); err != nil {
			t.Fatal(err)
		}
		meta.Recent = append(lastNotices(meta.Recent, recentNotices-1), loggedNotice{Seq: seq, Notice: n})
	}
	raw, err := jsonrec.Encode(meta)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(ctx, HeadKey, raw, 0); err != nil {
		t.Fatal(err)
	}
	b := newReplica(t, st)

	s, err := b.Subscribe(ctx, nil, cursorAt(b, 20))
	if err != nil {
		t.Fatal(err)
	}
	if got := drain(t, s, written-20); got[0].FamilyID != "f21" || got[len(got)-1].FamilyID != "f40" {
		t.Fatalf("resume among the newest: %s … %s, want f21 … f40", got[0].FamilyID, got[len(got)-1].FamilyID)
	}
	s.Close()
	if _, err := b.Subscribe(ctx, nil, cursorAt(b, 3)); !errors.Is(err, ErrCursorExpired) {
		t.Fatalf("resume from before the upgrade: %v, want ErrCursorExpired", err)
	}

	// Notices appended from now on are paged: a replay after them works.
	appendNotices(t, b, 100, func(int) string { return "c" })
	other := newReplica(t, st) // a replica that has not delivered them
	s, err = other.Subscribe(ctx, nil, cursorAt(other, written))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := drain(t, s, 100); got[0].FamilyID != "f0" || got[99].FamilyID != "f99" {
		t.Fatalf("replay after the upgrade: %s … %s", got[0].FamilyID, got[99].FamilyID)
	}
}

// A store error while replaying is UNAVAILABLE, and the next call goes on
// from the same place: no notice is skipped.
func TestReplayGoesOnAfterAStoreError(t *testing.T) {
	st := &faultStore{Store: memstore.New()}
	b := newReplica(t, st)
	appendNotices(t, b, 300, func(int) string { return "c" })
	s, err := b.Subscribe(context.Background(), nil, cursorAt(b, 10))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	first := drain(t, s, 89) // the rest of page 0: the next call reads page 1
	st.inject(&readFault{op: "get", prefix: noticePagesPrefix, once: true, fail: errStoreDown})
	var ue *brokererr.UnavailableError
	if _, err := s.Next(context.Background()); !errors.As(err, &ue) {
		t.Fatalf("replay during a store outage: %v, want UnavailableError", err)
	}
	rest := drain(t, s, 290-89)
	got := append(first, rest...)
	for i, n := range got {
		if want := fmt.Sprintf("f%d", 10+i); n.FamilyID != want {
			t.Fatalf("notice %d is %s, want %s", i, n.FamilyID, want)
		}
	}
}

// During a rolling upgrade a replica of the earlier version appends a
// notice without a page and rewrites the head without paged_from. No
// replay may then look for that notice in a page (it would silently miss
// it): a cursor from before it is OUT_OF_RANGE, and replays after it read
// pages as usual once this version appends again.
func TestNoticeAppendedByAnEarlierVersionIsNeverLookedForInAPage(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	b := newReplica(t, st, withPoll(10*time.Millisecond))
	appendNotices(t, b, 100, func(int) string { return "c" })

	// The earlier version's append: its own record and the head, whose
	// decoding and re-encoding loses the field it does not know.
	old := Notice{CredentialID: "c", FamilyID: "from-the-earlier-version", Kind: FamilyActivated}
	raw, _ := jsonrec.Encode(old)
	rewriteHeadAsEarlierVersion(t, st, func(meta *noticeLogMeta) {
		if _, err := st.Put(ctx, noticeKey(meta.NextSeq), raw, 0); err != nil {
			t.Fatal(err)
		}
		meta.Recent = append(lastNotices(meta.Recent, recentNotices-1), loggedNotice{Seq: meta.NextSeq, Notice: old})
		meta.NextSeq++
	})
	poll.Until(t, 10*time.Second, "the follower to deliver the earlier version's notice", func() bool {
		b.notices.mu.Lock()
		defer b.notices.mu.Unlock()
		return b.notices.delivered == 101
	})
	appendNotices(t, b, 40, func(int) string { return "c" }) // 102…141

	if _, err := b.Subscribe(ctx, nil, cursorAt(b, 50)); !errors.Is(err, ErrCursorExpired) {
		t.Fatalf("replay across the earlier version's notice: %v, want ErrCursorExpired", err)
	}
	s, err := b.Subscribe(ctx, nil, cursorAt(b, 104))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.store == nil {
		t.Fatal("a resume from 104 should read the store (the ring holds the newest 32)")
	}
	if got := drain(t, s, 141-104); got[0].FamilyID != "f3" || got[len(got)-1].FamilyID != "f39" {
		t.Fatalf("replay after the earlier version's notice: %s … %s, want f3 … f39", got[0].FamilyID, got[len(got)-1].FamilyID)
	}
}
