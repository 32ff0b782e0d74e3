package lease

import (
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/store/memstore"
)

// gains accumulates what Config.Gained reports.
type gains struct {
	mu  sync.Mutex
	got uint64
}

func (g *gains) add(shards uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.got |= shards
}

// take returns the shards reported since the last take.
func (g *gains) take() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	got := g.got
	g.got = 0
	return got
}

// Gained names exactly the shards whose duties come to a replica: all of
// them when it joins alone, those of a replica that leaves, all of them
// again when its own lease lapsed and is renewed; a renewal that changes
// nothing reports nothing. The broker's scheduler wakes those shards'
// credentials with it (their idle refreshes may be due already).
func TestGainedNamesTheShardsThatComeHere(t *testing.T) {
	const all = uint64(math.MaxUint64)
	shared := memstore.New()
	var g gains
	a := startReplica(t, shared, "a", g.add)
	if got := g.take(); got != all {
		t.Fatalf("joining alone gained %064b, want every shard", got)
	}

	b := startReplica(t, shared, "b")
	poll.Until(t, 10*time.Second, "two replicas share the shards", func() bool { return settled(a, b) })
	g.take()
	mine := a.m.held.Load().mine
	b.close()
	poll.Until(t, 10*time.Second, "a holds every shard", func() bool { return settled(a) })
	if got := g.take(); got != all&^mine {
		t.Fatalf("after b left, a gained %064b, want b's shards %064b", got, all&^mine)
	}

	writes := a.st.writes.Load()
	poll.Until(t, 10*time.Second, "three renewals", func() bool { return a.st.writes.Load()-writes >= 3 })
	if got := g.take(); got != 0 {
		t.Fatalf("renewals that changed nothing gained %064b", got)
	}

	a.st.cut.Store(true)
	poll.Until(t, 10*time.Second, "a's lease lapses", func() bool { return !a.m.Owns(fmt.Sprint("credential-", 0)) })
	a.st.cut.Store(false)
	poll.Until(t, 10*time.Second, "a holds every shard again", func() bool { return settled(a) })
	if got := g.take(); got != all {
		t.Fatalf("renewed after a lapse, a gained %064b, want every shard", got)
	}
}
