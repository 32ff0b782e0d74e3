package vaultstore_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/vaultstore"
)

// The store contract holds on a 3-node raft cluster, with the first
// address a standby: every request is forwarded to the active node.
// Then the active node is killed: the store given every node carries on
// after the election, with every record written before; a store given
// only the killed node's address does not.
func TestCluster(t *testing.T) {
	c := vaulttest.StartCluster(t, 3)
	active := c.Active()
	standbyFirst := slices.Clone(c.Addrs())
	slices.SortFunc(standbyFirst, func(a, b string) int {
		if (a == active.Addr) == (b == active.Addr) {
			return 0
		}
		if a == active.Addr {
			return 1
		}
		return -1
	})
	t.Run("contract through a standby", func(t *testing.T) {
		runContract(t, "cluster", vaultstore.Config{Client: c.Client(t), Addresses: standbyFirst})
	})

	ctx := context.Background()
	all := newStore(t, vaultstore.Config{Client: c.Client(t), Addresses: c.Addrs(), Prefix: "rotavault/failover"})
	single := newStore(t, vaultstore.Config{Client: c.Client(t), Addresses: []string{active.Addr}, Prefix: "rotavault/failover"})
	v, err := all.Put(ctx, "k", []byte("before"), 0)
	if err != nil {
		t.Fatal(err)
	}
	before := all.NodeChanges()

	c.Kill(active)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rec, err := all.Get(wctx, "k")
	if err != nil || string(rec.Value) != "before" || rec.Version != v {
		t.Fatalf("after the kill: %+v, %v; want the record written before", rec, err)
	}
	if _, err := all.Put(wctx, "k", []byte("after"), v); err != nil {
		t.Fatalf("write after the election: %v", err)
	}
	if all.NodeChanges() == before {
		t.Error("the store did not count its move to another node")
	}
	t.Logf("new active node %s; node changes %d", c.Active().Addr, all.NodeChanges()-before)

	sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
	defer scancel()
	if _, err := single.Get(sctx, "k"); err == nil || errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a store given only the killed node: %v, want it unreachable", err)
	}
}
