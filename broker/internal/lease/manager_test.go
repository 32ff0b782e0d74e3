package lease

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/memstore"
)

const testPeriod = time.Second

// cuttable is a store a replica loses at once and for good, as when its
// process is killed: every call fails from cut on, nothing says goodbye.
// It counts the lease writes tried through it. With raced set, another
// writer rewrites the lease record after each of the replica's reads, so
// that its next write conflicts.
type cuttable struct {
	store.Store
	cut, raced atomic.Bool
	writes     atomic.Int64
}

var errCut = errors.New("test: replica killed")

func (c *cuttable) Get(ctx context.Context, key string) (store.Record, error) {
	if c.cut.Load() {
		return store.Record{}, errCut
	}
	rec, err := c.Store.Get(ctx, key)
	if err == nil && key == Key && c.raced.Load() {
		_, _ = c.Store.Put(ctx, key, rec.Value, rec.Version)
	}
	return rec, err
}

func (c *cuttable) Put(ctx context.Context, key string, value []byte, expected uint64) (uint64, error) {
	if c.cut.Load() {
		return 0, errCut
	}
	if key == Key {
		c.writes.Add(1)
	}
	return c.Store.Put(ctx, key, value, expected)
}

// replica is one Manager running on its own view of a shared store.
type replica struct {
	m    *Manager
	st   *cuttable
	stop context.CancelFunc
	done chan struct{}
}

func startReplica(t *testing.T, shared store.Store, id string, gained ...func(uint64)) *replica {
	t.Helper()
	st := &cuttable{Store: shared}
	cfg := Config{Store: st, ReplicaID: id, Period: testPeriod, Now: time.Now}
	for _, g := range gained {
		cfg.Gained = g
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := m.Join(ctx); err != nil {
		t.Fatal(err)
	}
	r := &replica{m: m, st: st, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		m.Run(ctx)
	}()
	t.Cleanup(r.close)
	return r
}

func (r *replica) close() {
	r.stop()
	<-r.done
}

func owned(rs ...*replica) (total int, each []int) {
	for _, r := range rs {
		n := r.m.Stats().Owned
		total += n
		each = append(each, n)
	}
	return total, each
}

// settled reports whether rs hold every shard between them, none above
// the fair share (so none below what the others leave).
func settled(rs ...*replica) bool {
	total, each := owned(rs...)
	fair := fairShare(len(rs))
	for _, n := range each {
		if n < Shards-(len(rs)-1)*fair || n > fair {
			return false
		}
	}
	return total == Shards
}

func TestAloneHoldsEveryShardAtJoin(t *testing.T) {
	r := startReplica(t, memstore.New(), "a")
	// Join returned: no tick, no lease period waited.
	if got := r.m.Stats().Owned; got != Shards {
		t.Fatalf("a lone replica holds %d shards after joining, want %d", got, Shards)
	}
	for i := range 100 {
		if !r.m.Owns(fmt.Sprint("credential-", i)) {
			t.Fatalf("a lone replica does not own credential-%d's duties", i)
		}
	}
}

func TestJoiningReplicaGetsAShare(t *testing.T) {
	shared := memstore.New()
	a, b := startReplica(t, shared, "a"), startReplica(t, shared, "b")
	poll.Until(t, 10*time.Second, "two replicas share the shards", func() bool { return settled(a, b) })
	c := startReplica(t, shared, "c")
	poll.Until(t, 10*time.Second, "the joining replica gets its share", func() bool { return settled(a, b, c) })
}

func TestLeavingReplicaHandsOverAtOnce(t *testing.T) {
	shared := memstore.New()
	a, b := startReplica(t, shared, "a"), startReplica(t, shared, "b")
	poll.Until(t, 10*time.Second, "two replicas share the shards", func() bool { return settled(a, b) })
	a.close()
	left := time.Now()
	poll.Until(t, 10*time.Second, "b holds every shard", func() bool { return settled(b) })
	// One tick of b's, not the ttl of a dead member's.
	if took := time.Since(left); took >= testPeriod/2 {
		t.Errorf("b took %s over a's shards after a left, want under %s", took, testPeriod/2)
	}
}

func TestKilledReplicasShardsTakenWithinOnePeriod(t *testing.T) {
	shared := memstore.New()
	rs := []*replica{startReplica(t, shared, "a"), startReplica(t, shared, "b"), startReplica(t, shared, "c")}
	poll.Until(t, 10*time.Second, "three replicas share the shards", func() bool { return settled(rs...) })
	rs[0].st.cut.Store(true)
	killed := time.Now()
	poll.Until(t, 10*time.Second, "the survivors hold every shard", func() bool { return settled(rs[1:]...) })
	took := time.Since(killed)
	t.Logf("a killed replica's shards were taken over in %s (lease period %s)", took.Round(time.Millisecond), testPeriod)
	if took > testPeriod {
		t.Errorf("took %s, more than the lease period %s", took, testPeriod)
	}
	if rs[0].m.Stats().Owned != 0 {
		t.Error("the killed replica still believes it holds shards")
	}
	if h := rs[1].m.Stats().Handovers + rs[2].m.Stats().Handovers; h < int64(fairShare(3)-1) {
		t.Errorf("%d handovers counted, want the killed replica's share", h)
	}
}

// Another writer that always writes the lease record between a replica's
// read and its write (a replica of another version, an operator's script)
// makes every lease write conflict: each replica still writes at most the
// bound, instead of retrying at the store's pace.
func TestLeaseWritesStayUnderTheBound(t *testing.T) {
	shared := memstore.New()
	rs := []*replica{startReplica(t, shared, "a"), startReplica(t, shared, "b")}
	poll.Until(t, 10*time.Second, "two replicas share the shards", func() bool { return settled(rs...) })
	start := time.Now() // before the counts start: the window is no shorter than counted
	for _, r := range rs {
		r.st.writes.Store(0)
		r.st.raced.Store(true)
	}
	poll.Until(t, 10*time.Second, "20 conflicts at each replica", func() bool {
		return rs[0].m.Stats().Conflicts >= 20 && rs[1].m.Stats().Conflicts >= 20
	})
	elapsed := time.Since(start)
	bound := MaxWritesPerSecond(testPeriod)*elapsed.Seconds() + MaxWritesPerTick + 1
	for i, r := range rs {
		got := r.st.writes.Load()
		t.Logf("replica %d: %d lease writes in %s, every one conflicting; bound %.0f", i, got, elapsed.Round(time.Millisecond), bound)
		if float64(got) > bound {
			t.Errorf("replica %d wrote the lease record %d times in %s, above the bound %.0f", i, got, elapsed, bound)
		}
		if r.m.Stats().Conflicts == 0 {
			t.Errorf("replica %d met no conflict", i)
		}
	}
}

// While the store cannot be reached a replica's leases lapse and its
// duties pause (within half a period: no other replica can have taken them
// over before); when the store answers again they resume.
func TestDutiesPauseWhileTheStoreIsDown(t *testing.T) {
	r := startReplica(t, memstore.New(), "a")
	r.st.cut.Store(true)
	down := time.Now()
	poll.Until(t, 10*time.Second, "the duties pause", func() bool { return r.m.Stats().Owned == 0 })
	if took := time.Since(down); took > testPeriod/2 {
		t.Errorf("the duties went on %s into the outage, past half the period %s", took, testPeriod/2)
	}
	if r.m.Owns("credential-1") {
		t.Error("Owns says yes with the lease lapsed")
	}
	r.st.cut.Store(false)
	poll.Until(t, 10*time.Second, "the duties resume", func() bool { return r.m.Stats().Owned == Shards })
}
