package lease

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math/bits"
	"slices"
)

// Shards is the fixed number of shards: enough for an even share among
// dozens of replicas, few enough for one small record. A key's shard never
// changes, so neither may this number while replicas share a store.
const Shards = 64

// Key is the store key of the lease table.
const Key = "meta/duty-leases"

// ShardOf is key's shard (a credential id, a flow's state): FNV-1a, so
// every replica and every version agrees.
func ShardOf(key string) int {
	h := fnv.New64a()
	_, _ = h.Write([]byte(key))
	return int(h.Sum64() % Shards)
}

// table is the lease record: the live members and each shard's holder.
type table struct {
	// Members maps a replica id to its heartbeat, bumped by every write of
	// that replica: observers judge liveness by whether it moves.
	Members map[string]uint64 `json:"members"`
	// Shards holds Shards entries.
	Shards []shard `json:"shards"`
}

// shard is one shard's lease.
type shard struct {
	// Holder is the member doing the shard's duties; "" when free.
	Holder string `json:"h,omitempty"`
	// Was is a free shard's last holder, so that whoever takes it knows it
	// for a handover.
	Was string `json:"w,omitempty"`
}

func emptyTable() *table {
	return &table{Members: map[string]uint64{}, Shards: make([]shard, Shards)}
}

func decodeTable(b []byte) (*table, error) {
	t := emptyTable()
	if err := json.Unmarshal(b, t); err != nil {
		return nil, fmt.Errorf("lease: decoding the lease table: %w", err)
	}
	if len(t.Shards) != Shards {
		return nil, fmt.Errorf("lease: the lease table has %d shards, this version %d", len(t.Shards), Shards)
	}
	if t.Members == nil {
		t.Members = map[string]uint64{}
	}
	return t, nil
}

func (t *table) encode() []byte {
	b, _ := json.Marshal(t) // plain strings and numbers: cannot fail
	return b
}

func (t *table) clone() *table {
	c := &table{Members: make(map[string]uint64, len(t.Members)), Shards: slices.Clone(t.Shards)}
	for id, beat := range t.Members {
		c.Members[id] = beat
	}
	return c
}

// held is the set of shards id holds, one bit per shard.
func (t *table) held(id string) uint64 {
	var m uint64
	for i, s := range t.Shards {
		if s.Holder == id {
			m |= 1 << i
		}
	}
	return m
}

// fairShare is how many shards each of n live members may hold.
func fairShare(n int) int {
	return (Shards + n - 1) / n
}

// change is what one write of a replica does to the table.
type change struct {
	next *table
	// mine is the shards the replica holds after the write; handovers how
	// many of them it took from another member (dead, gone, or giving
	// them back on a rebalance).
	mine      uint64
	handovers int
}

// renew is me's next table: members in dead removed and their shards
// freed, me's heartbeat bumped (added when new), shards beyond me's fair
// share given back and free shards taken up to it. A pure function of its
// input: table tests cover it.
func (t *table) renew(me string, dead map[string]bool) change {
	n := t.clone()
	for id := range dead {
		if id != me {
			delete(n.Members, id)
		}
	}
	n.Members[me]++
	for i, s := range n.Shards {
		if _, live := n.Members[s.Holder]; s.Holder != "" && !live {
			n.Shards[i] = shard{Was: s.Holder} // dead, or left without a goodbye
		}
	}
	fair := fairShare(len(n.Members))
	mine := n.held(me)
	// Give back from the top, take from the bottom: shards settle where
	// they were, and a joining member finds the given-back ones free.
	for i := Shards - 1; i >= 0 && bits.OnesCount64(mine) > fair; i-- {
		if mine&(1<<i) != 0 {
			n.Shards[i] = shard{Was: me}
			mine &^= 1 << i
		}
	}
	handovers := 0
	for i := 0; i < Shards && bits.OnesCount64(mine) < fair; i++ {
		if s := n.Shards[i]; s.Holder == "" {
			if s.Was != "" && s.Was != me {
				handovers++
			}
			n.Shards[i] = shard{Holder: me}
			mine |= 1 << i
		}
	}
	return change{next: n, mine: mine, handovers: handovers}
}

// leave is the table without me: its shards freed for the others to take
// on their next tick.
func (t *table) leave(me string) *table {
	n := t.clone()
	delete(n.Members, me)
	for i, s := range n.Shards {
		if s.Holder == me {
			n.Shards[i] = shard{Was: me}
		}
	}
	return n
}
