package boltstore

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/store"
)

// lastTxID is the id of the file's last committed write transaction, which
// bbolt raises by one per commit (and so per fsync).
func lastTxID(t *testing.T, s *Store) int {
	t.Helper()
	var id int
	if err := s.db.View(func(tx *bolt.Tx) error { id = tx.ID(); return nil }); err != nil {
		t.Fatal(err)
	}
	return id
}

// holdCommit starts a write whose transaction stays open until release(n)
// sees n more writers queued behind it, so that they are certain to share
// the next commit; release returns once the held write is committed.
func holdCommit(t *testing.T, s *Store) (release func(n int)) {
	t.Helper()
	entered, queued := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- s.commits.write(func(*bolt.Tx) error {
			close(entered)
			<-queued
			return nil
		})
	}()
	<-entered
	return func(n int) {
		t.Helper()
		defer func() {
			// Also when the poll fails: the writers must not wait for
			// ever behind the held transaction.
			close(queued)
			if err := <-done; err != nil {
				t.Errorf("the held write: %v", err)
			}
		}()
		poll.Until(t, 10*time.Second, fmt.Sprintf("%d writers queued", n), func() bool {
			s.commits.mu.Lock()
			defer s.commits.mu.Unlock()
			return len(s.commits.queue) == n
		})
	}
}

// Writers that arrive while a commit is under way share the next one: 32
// concurrent Puts behind one held write cost two commits, not 33.
func TestConcurrentPutsShareCommits(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "s.db"), testKey(t, 1), Options{})
	t.Cleanup(func() { closeStore(t, s) })
	const writers = 32
	before := lastTxID(t, s)
	release := holdCommit(t, s)
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			if _, err := s.Put(t.Context(), fmt.Sprintf("shared/k%d", i), []byte("v"), 0); err != nil {
				t.Errorf("Put %d: %v", i, err)
			}
		})
	}
	release(writers)
	wg.Wait()
	if commits := lastTxID(t, s) - before; commits != 2 {
		t.Errorf("%d Puts and one held write took %d commits, want 2", writers, commits)
	}
	for i := range writers {
		wantGet(t, s, fmt.Sprintf("shared/k%d", i), "v", 1)
	}
}

// A check-and-set conflict inside a shared commit fails that Put alone: of
// two creates of one key in the same commit exactly one wins, a stale
// version is refused, and the other writes of the commit are stored.
func TestConflictInSharedCommitFailsAlone(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "s.db"), testKey(t, 1), Options{})
	t.Cleanup(func() { closeStore(t, s) })
	put(t, s, "batch/existing", "v1", 0)
	put(t, s, "batch/existing", "v2", 1)
	before := lastTxID(t, s)

	writes := []struct {
		key, value string
		expected   uint64
	}{
		{"batch/twice", "a", 0},
		{"batch/twice", "b", 0},
		{"batch/existing", "stale", 1},
		{"batch/other", "o", 0},
		{"batch/existing", "v3", 2},
	}
	release := holdCommit(t, s)
	errs := make([]error, len(writes))
	var wg sync.WaitGroup
	for i, w := range writes {
		wg.Go(func() { _, errs[i] = s.Put(t.Context(), w.key, []byte(w.value), w.expected) })
	}
	release(len(writes))
	wg.Wait()
	if commits := lastTxID(t, s) - before; commits != 2 {
		t.Fatalf("took %d commits, want 2 (the held one, then all the writes together)", commits)
	}

	if (errs[0] == nil) == (errs[1] == nil) {
		t.Errorf("two creates of one key in one commit: errors %v and %v, want exactly one conflict", errs[0], errs[1])
	}
	for _, i := range []int{0, 1} {
		if errs[i] != nil && !errors.Is(errs[i], store.ErrConflict) {
			t.Errorf("the losing create: %v, want store.ErrConflict", errs[i])
		}
	}
	winner := "a"
	if errs[0] != nil {
		winner = "b"
	}
	wantGet(t, s, "batch/twice", winner, 1)
	if !errors.Is(errs[2], store.ErrConflict) {
		t.Errorf("Put at a stale version: %v, want store.ErrConflict", errs[2])
	}
	for _, i := range []int{3, 4} {
		if errs[i] != nil {
			t.Errorf("Put %s in the same commit as the conflicts: %v", writes[i].key, errs[i])
		}
	}
	wantGet(t, s, "batch/other", "o", 1)
	wantGet(t, s, "batch/existing", "v3", 3)
}
