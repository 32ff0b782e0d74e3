package broker

import (
	"context"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/store/memstore"
)

// A caller whose need no fresh token meets (a provider issuing shorter
// tokens than the caller asks for) gets the fresh token after one rotation;
// it must not rotate the family again and again.
func TestUnmeetableNeedCostsOneRotation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clk := fakeclock.New(time.Now())
	sim, bs, spec := setup(t, memstore.New(), clk)
	b := bs[0]
	if _, err := b.Credentials().Create(ctx, "x", spec); err != nil {
		t.Fatal(err)
	}
	rt, err := sim.IssueRefreshToken("c", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.ImportRefreshToken(ctx, "x", rt); err != nil {
		t.Fatal(err)
	}
	before := sim.Stats().RefreshRequests
	e, err := b.entry(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	never := func(*view) bool { return true }
	v, err := b.refresh(ctx, e, nil, never)
	if err != nil {
		t.Fatal(err)
	}
	if got := sim.Stats().RefreshRequests - before; got != 1 {
		t.Fatalf("provider saw %d refreshes for one unmeetable request, want 1", got)
	}
	if v.fam.Access == nil || v.fam.Status != family.StatusActive {
		t.Fatalf("got %+v, want the freshly rotated active family", v.fam)
	}
}
