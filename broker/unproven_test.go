package broker

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/store/memstore"
)

// closedURL is a loopback URL nothing listens at: connection refused.
func closedURL(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	return "http://" + addr
}

// An import whose proving refresh cannot reach the provider used to answer
// UNAVAILABLE ("retry later") although the token was stored, and people
// imported it again. It now answers stored-but-unproven, the credential
// shows a status of its own, and the broker proves the token by itself
// once the provider answers.
func TestImportWithTheProviderUnreachableIsStoredUnproven(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(time.Now())
	sim := startSim(t, providersim.Config{Now: clk.Now})
	b := newTestBroker(t, memstore.New(), replicaOpts(clk, option.WithSchedulerInterval(10*time.Millisecond))...)
	spec := simSpec(sim)
	spec.BaseURL = closedURL(t)
	if _, err := b.Credentials().Create(ctx, "x", spec); err != nil {
		t.Fatal(err)
	}
	rt, _ := sim.IssueRefreshToken("c", nil)
	act, err := b.ImportRefreshToken(ctx, "x", rt)
	if err != nil || !act.Unproven || act.Generation != 0 {
		t.Fatalf("import with the provider unreachable: %+v %v, want stored, unproven", act, err)
	}
	if c, err := b.Credentials().Get(ctx, "x"); err != nil || c.Status != family.StatusUnproven {
		t.Fatalf("credential after the import: %s %v, want unproven", c.Status, err)
	}
	// The provider is reachable again (here: the right URL); nobody imports
	// or calls: the scheduler proves the token.
	if _, err := b.Credentials().Update(ctx, "x", []credspec.Field{credspec.FieldBaseURL}, credspec.Spec{BaseURL: sim.URL()}); err != nil {
		t.Fatal(err)
	}
	// A scheduled attempt still running against the old URL when the clock
	// moves sets its retry a full wait later: move the clock on each look.
	poll.UntilSeen(t, 10*time.Second, "the scheduler proved the imported token", func() (bool, string) {
		c, err := b.Credentials().Get(ctx, "x")
		if err == nil && c.Status == family.StatusActive && c.Generation == 1 {
			return true, ""
		}
		clk.Add(scheduledFailureWait + time.Second)
		return false, string(c.Status)
	})
	if s := sim.Stats(); s.Rotations != 1 {
		t.Fatalf("provider rotations %d, want the one proving refresh", s.Rotations)
	}
}
