package broker

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/authflow"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/internal/lease"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/memstore"
)

// dutyTestPeriod: leases renew every 100ms, so replicas settle quickly.
const dutyTestPeriod = time.Second

// settledDuties reports whether bs hold every shard between them, each
// some.
func settledDuties(bs ...*Broker) bool {
	total := 0
	for _, b := range bs {
		n := b.Stats().Duties.Owned
		if n == 0 {
			return false
		}
		total += n
	}
	return total == lease.Shards
}

// Idle-timeout refreshes are a shared duty: with two replicas on one store,
// each credential's is done by the replica holding its shard, not by
// whichever scheduler gets there first (which cost the other a claim wait
// or a failed check-and-set and a read).
func TestIdleRefreshesAreDoneByTheShardHolder(t *testing.T) {
	const n = 16
	ctx := context.Background()
	clk := fakeclock.New(time.Now())
	st := memstore.New()
	ts := startTokenServer(t, time.Hour)
	opts := []option.Option{option.WithClock(clk.Now), option.WithSchedulerInterval(10 * time.Millisecond), option.WithIntrospectionInterval(0), option.WithDutyLeasePeriod(dutyTestPeriod)}
	auditA, auditB := &recordingAuditor{}, &recordingAuditor{}
	a := newBroker(t, Config{Store: st, Provider: provider.New(nil), Auditor: auditA}, opts...)
	for i := range n {
		id := fmt.Sprintf("idle-%d", i)
		// Nobody uses the tokens: only the idle timeout makes them due.
		if _, err := a.Credentials().Create(ctx, id, credspec.Spec{ProviderKind: credspec.ProviderOAuth2, TokenURL: ts.URL, ClientID: "c", RefreshIdle: 2 * time.Hour}); err != nil {
			t.Fatal(err)
		}
		if _, err := a.ImportRefreshToken(ctx, id, "rt-0"); err != nil {
			t.Fatal(err)
		}
	}
	b := newBroker(t, Config{Store: st, Provider: provider.New(nil), Auditor: auditB}, opts...) // loads them all
	poll.Until(t, 10*time.Second, "two replicas share the duties", func() bool { return settledDuties(a, b) })
	before := auditA.count(audit.ActionRotated) + auditB.count(audit.ActionRotated)
	auditA.mu.Lock()
	fromA := len(auditA.events)
	auditA.mu.Unlock()
	auditB.mu.Lock()
	fromB := len(auditB.events)
	auditB.mu.Unlock()

	clk.Add(time.Hour + time.Minute) // past half the idle timeout
	poll.Until(t, 10*time.Second, fmt.Sprintf("%d idle rotations", n), func() bool {
		return auditA.count(audit.ActionRotated)+auditB.count(audit.ActionRotated)-before >= n
	})
	for _, r := range []struct {
		name string
		b    *Broker
		a    *recordingAuditor
		from int
	}{{"A", a, auditA, fromA}, {"B", b, auditB, fromB}} {
		r.a.mu.Lock()
		for _, e := range r.a.events[r.from:] {
			if e.Action == audit.ActionRotated && strings.HasPrefix(e.Credential, "idle-") && !r.b.owns(e.Credential) {
				t.Errorf("replica %s rotated %s, whose shard the other replica holds", r.name, e.Credential)
			}
		}
		r.a.mu.Unlock()
	}
}

// listCounter counts the flow listings (the sweep's) a replica makes.
type listCounter struct {
	store.Store
	flowLists atomic.Int64
}

func (c *listCounter) List(ctx context.Context, prefix string) ([]string, error) {
	if prefix == authflow.RecordPrefix {
		c.flowLists.Add(1)
	}
	return c.Store.List(ctx, prefix)
}

// The flow sweep is one replica's duty: the other does not list and read
// every flow too. When the sweeping replica stops, the other takes over.
func TestOneReplicaSweepsTheFlows(t *testing.T) {
	st := memstore.New()
	opts := []option.Option{option.WithSchedulerInterval(time.Hour), option.WithIntrospectionInterval(0), option.WithDutyLeasePeriod(dutyTestPeriod), option.WithFlowTiming(10*time.Millisecond, time.Second)}
	ca, cb := &listCounter{Store: st}, &listCounter{Store: st}
	a := newBroker(t, Config{Store: ca, Provider: provider.New(nil), Auditor: &recordingAuditor{}}, opts...)
	b := newBroker(t, Config{Store: cb, Provider: provider.New(nil), Auditor: &recordingAuditor{}}, opts...)
	poll.Until(t, 10*time.Second, "two replicas share the duties", func() bool { return settledDuties(a, b) })
	sweeper, other, sweeps, others := a, b, ca, cb
	if !a.owns(flowSweepDuty) {
		sweeper, other, sweeps, others = b, a, cb, ca
	}
	from, otherFrom := sweeps.flowLists.Load(), others.flowLists.Load()
	poll.Until(t, 10*time.Second, "20 sweeps", func() bool { return sweeps.flowLists.Load()-from >= 20 })
	if got := others.flowLists.Load() - otherFrom; got != 0 {
		t.Errorf("the replica not holding the sweep listed the flows %d times while the other swept 20 times", got)
	}
	_ = sweeper.Close()
	otherFrom = others.flowLists.Load()
	poll.Until(t, 10*time.Second, "the remaining replica sweeps", func() bool {
		return other.owns(flowSweepDuty) && others.flowLists.Load()-otherFrom >= 3
	})
}
