package lease

import (
	"math/bits"
	"testing"
)

// tableWith builds a table whose members hold the shards counts say, in
// order from shard 0.
func tableWith(counts map[string]int, order ...string) *table {
	t := emptyTable()
	i := 0
	for _, id := range order {
		t.Members[id] = 1
		for range counts[id] {
			t.Shards[i] = shard{Holder: id}
			i++
		}
	}
	return t
}

func TestRenewSharesShardsFairly(t *testing.T) {
	tests := []struct {
		name          string
		t             *table
		me            string
		dead          map[string]bool
		wantMine      int
		wantHandovers int
		wantMembers   int
	}{
		{name: "alone in a fresh store: every shard", t: emptyTable(), me: "a", wantMine: Shards, wantMembers: 1},
		{name: "joining a full member: nothing free yet", t: tableWith(map[string]int{"a": Shards}, "a"), me: "b", wantMine: 0, wantMembers: 2},
		{name: "above the fair share: gives back", t: tableWith(map[string]int{"a": Shards}, "a", "b"), me: "a", wantMine: Shards / 2, wantMembers: 2},
		{name: "a dead member's shards are handed over", t: tableWith(map[string]int{"a": 32, "b": 32}, "a", "b"), me: "b",
			dead: map[string]bool{"a": true}, wantMine: Shards, wantHandovers: 32, wantMembers: 1},
		{name: "five members: at most the ceiling each", t: tableWith(map[string]int{"a": 13, "b": 13, "c": 13, "d": 13}, "a", "b", "c", "d", "e"), me: "e",
			wantMine: 12, wantMembers: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.t.clone()
			c := tt.t.renew(tt.me, tt.dead)
			if got := bits.OnesCount64(c.mine); got != tt.wantMine {
				t.Errorf("holds %d shards, want %d", got, tt.wantMine)
			}
			if c.mine != c.next.held(tt.me) {
				t.Error("the holding differs from the table written")
			}
			if c.handovers != tt.wantHandovers {
				t.Errorf("%d handovers, want %d", c.handovers, tt.wantHandovers)
			}
			if len(c.next.Members) != tt.wantMembers || c.next.Members[tt.me] != before.Members[tt.me]+1 {
				t.Errorf("members %v, want %d with %s's heartbeat bumped", c.next.Members, tt.wantMembers, tt.me)
			}
			if n := bits.OnesCount64(c.mine); n > fairShare(len(c.next.Members)) {
				t.Errorf("%s holds %d shards, above the fair share", tt.me, n)
			}
			if tt.t.Members[tt.me] != before.Members[tt.me] || tt.t.Shards[0] != before.Shards[0] {
				t.Error("renew changed its input")
			}
		})
	}
}

func TestLeaveFreesTheShards(t *testing.T) {
	n := tableWith(map[string]int{"a": 32, "b": 32}, "a", "b").leave("a")
	if _, ok := n.Members["a"]; ok || n.held("a") != 0 {
		t.Fatal("a is still in the table")
	}
	if c := n.renew("b", nil); bits.OnesCount64(c.mine) != Shards || c.handovers != 32 {
		t.Fatalf("b took %d shards, %d handovers; want all, 32", bits.OnesCount64(c.mine), c.handovers)
	}
}

func TestTableRoundTrips(t *testing.T) {
	in := tableWith(map[string]int{"a": 3}, "a", "b")
	out, err := decodeTable(in.encode())
	if err != nil {
		t.Fatal(err)
	}
	if out.held("a") != 0b111 || out.Members["b"] != 1 {
		t.Fatalf("decoded %+v", out)
	}
	if _, err := decodeTable([]byte(`{"members":{},"shards":[]}`)); err == nil {
		t.Fatal("a table of another shard count was accepted")
	}
}

func TestShardOfSpreadsKeys(t *testing.T) {
	var seen [Shards]int
	for i := range 6400 {
		seen[ShardOf("credential-"+string(rune('a'+i%26))+string(rune('0'+i/26%10))+string(rune('A'+i/260)))]++
	}
	for s, n := range seen {
		if n == 0 {
			t.Errorf("shard %d got no key of 6,400", s)
		}
	}
}
