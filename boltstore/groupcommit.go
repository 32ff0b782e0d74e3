package boltstore

import (
	"errors"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// errLeaderPanicked is what the writers of a batch get when applying another
// write of that batch panicked: the transaction was rolled back, so none of
// them is stored.
var errLeaderPanicked = errors.New("boltstore: a write in the same commit panicked; nothing was written")

// groupCommit makes concurrent writers share bbolt transactions, and so
// fsyncs: every commit of the file is an fsync, which costs far more than
// the writes in it. A writer that finds no commit under way commits at once,
// alone; writers that arrive while one is under way queue, and the first of
// them then commits the whole queue in one transaction. A lone writer
// waits for no timer, unlike bbolt's DB.Batch, whose 10 ms default delay
// would cost a serial caller (an onboarding makes about ten writes in a row)
// most of its throughput.
//
// Each write is applied exactly once, in queue order, inside the shared
// transaction, and its outcome is its own: a check-and-set that finds
// another version reports store.ErrConflict to its writer and writes
// nothing, and the others of the batch commit all the same. That is why
// apply functions return an outcome instead of failing the transaction
// (which, as with DB.Batch, would roll back every write in it and have to
// re-run them). Only a failed commit fails every write of the batch.
//
// It is safe for concurrent use. It starts no goroutine: the leader of a
// batch is one of its writers.
type groupCommit struct {
	db *bolt.DB

	mu      sync.Mutex
	queue   []*pendingWrite
	leading bool // a writer is committing; queued writers wait for it
}

// pendingWrite is one writer's part of a batch.
type pendingWrite struct {
	// apply makes the write in tx and returns its outcome. It must write
	// nothing when it returns an error, so that the error concerns this
	// writer alone.
	apply func(tx *bolt.Tx) error
	err   error
	// done receives true when this writer is to lead the next commit, or
	// false when err holds its final outcome.
	done chan bool
}

// write applies apply in a committed transaction, possibly shared with other
// writers, and returns its outcome once the commit is on disk.
func (g *groupCommit) write(apply func(tx *bolt.Tx) error) error {
	w := &pendingWrite{apply: apply, done: make(chan bool, 1)}
	g.mu.Lock()
	g.queue = append(g.queue, w)
	wait := g.leading
	g.leading = true
	g.mu.Unlock()
	if wait {
		if lead := <-w.done; !lead {
			return w.err
		}
	}
	g.commitQueue(w)
	return w.err
}

// commitQueue commits every queued write (self's among them) in one
// transaction, tells each its outcome, and hands the lead to the first
// writer that queued meanwhile, if any.
func (g *groupCommit) commitQueue(self *pendingWrite) {
	g.mu.Lock()
	batch := g.queue
	g.queue = nil
	g.mu.Unlock()

	applied := false
	defer func() {
		if !applied {
			// apply panicked: the transaction is rolled back. The
			// others must not wait for ever, and the lead must pass on.
			for _, w := range batch {
				w.err = errLeaderPanicked
			}
		}
		for _, w := range batch {
			if w != self {
				w.done <- false
			}
		}
		g.mu.Lock()
		if len(g.queue) > 0 {
			g.queue[0].done <- true
		} else {
			g.leading = false
		}
		g.mu.Unlock()
	}()
	err := g.db.Update(func(tx *bolt.Tx) error {
		for _, w := range batch {
			w.err = w.apply(tx)
		}
		return nil
	})
	applied = true
	if err != nil {
		for _, w := range batch {
			if w.err == nil {
				w.err = err
			}
		}
	}
}
