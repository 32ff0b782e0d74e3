package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/authflow"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/store"
)

// startConcurrently starts n authorization-code flows at once, flow i on
// credential credOf(i) by actor actorOf(i) through replicas[i%len], and
// returns the states started and how many were refused with
// ErrTooManyFlows; any other error fails the test.
func startConcurrently(t *testing.T, replicas []*Broker, n int, credOf, actorOf func(int) string) (started []string, refused int) {
	t.Helper()
	var (
		mu      sync.Mutex
		tooMany atomic.Int64
		wg      sync.WaitGroup
	)
	for i := range n {
		wg.Go(func() {
			ctx := audit.WithActor(context.Background(), actorOf(i))
			p, err := replicas[i%len(replicas)].Flows().StartAuthorization(ctx, credOf(i), "http://127.0.0.1:1/cb", nil)
			switch {
			case errors.Is(err, authflow.ErrTooManyFlows):
				tooMany.Add(1)
			case err != nil:
				t.Errorf("start %d: %v", i, err)
			default:
				mu.Lock()
				started = append(started, p.State)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return started, int(tooMany.Load())
}

func createCredentials(ctx context.Context, t *testing.T, b *Broker, spec credspec.Spec, n int) {
	t.Helper()
	for i := range n {
		if _, err := b.Credentials().Create(ctx, fmt.Sprintf("c%d", i), spec); err != nil {
			t.Fatal(err)
		}
	}
}

// latencyStore answers writes after a delay, as a store across a network
// does: the window in which a check made before a write can be overtaken.
type latencyStore struct {
	store.Store
	delay time.Duration
}

func (s latencyStore) Put(ctx context.Context, key string, value []byte, expected uint64) (uint64, error) {
	time.Sleep(s.delay) // the network round trip being simulated
	return s.Store.Put(ctx, key, value, expected)
}

// Concurrent starts on two replicas sharing a store never exceed the
// store-wide bound: the check and the reservation are one check-and-set.
func TestFlowBoundIsExactAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	env := newFlowEnv(t)
	env.st = latencyStore{Store: env.st, delay: time.Millisecond}
	a := env.primary(ctx, t, option.WithMaxFlows(40))
	b := env.replica(t, "replica-b", time.Hour, option.WithMaxFlows(40))
	createCredentials(ctx, t, a, env.spec, 10)

	started, refused := startConcurrently(t, []*Broker{a, b}, 80,
		func(i int) string { return fmt.Sprintf("c%d", i%10) },
		func(i int) string { return fmt.Sprintf("operator-%d", i) })
	if len(started) != 40 || refused != 40 {
		t.Fatalf("80 concurrent starts with a bound of 40: %d started, %d refused", len(started), refused)
	}
	if keys, err := env.st.List(ctx, authflow.RecordPrefix); err != nil || len(keys) != 40 {
		t.Fatalf("the store holds %d flows (%v), want 40", len(keys), err)
	}
}

// Within the store-wide bound, one credential has at most 10 pending
// flows and one operator at most 100, exactly, under concurrency; a
// credential's place returns when one of its flows ends, and flows keep
// their 10-minute lifetime.
func TestFlowSharesPerCredentialAndOperator(t *testing.T) {
	ctx := context.Background()
	env := newFlowEnv(t)
	a := env.primary(ctx, t)
	b := env.replica(t, "replica-b", time.Hour)
	createCredentials(ctx, t, a, env.spec, 12)

	started, refused := startConcurrently(t, []*Broker{a, b}, 25,
		func(int) string { return "x" },
		func(i int) string { return fmt.Sprintf("operator-%d", i) })
	if len(started) != authflow.MaxPendingFlowsPerCredential || refused != 25-authflow.MaxPendingFlowsPerCredential {
		t.Fatalf("25 concurrent starts on one credential: %d started, %d refused; want %d started", len(started), refused, authflow.MaxPendingFlowsPerCredential)
	}
	f := readFlowRecord(t, env.st, started[0])
	if got := f.ExpiresAt.Sub(f.StartedAt); got != 10*time.Minute {
		t.Errorf("a flow's lifetime is %v, want 10m", got)
	}

	byOne, refused := startConcurrently(t, []*Broker{a, b}, 120,
		func(i int) string { return fmt.Sprintf("c%d", i%12) },
		func(int) string { return "one-operator" })
	if len(byOne) != authflow.MaxPendingFlowsPerActor || refused != 120-authflow.MaxPendingFlowsPerActor {
		t.Fatalf("120 concurrent starts by one operator: %d started, %d refused; want %d started", len(byOne), refused, authflow.MaxPendingFlowsPerActor)
	}

	// One of x's flows ends: after the next sweep x has a place again.
	newcomer := audit.WithActor(ctx, "newcomer")
	if _, err := a.Flows().StartAuthorization(newcomer, "x", "http://127.0.0.1:1/cb", nil); !errors.Is(err, authflow.ErrTooManyFlows) {
		t.Fatalf("an 11th flow for x: %v, want ErrTooManyFlows", err)
	}
	a.flows.Fail(ctx, started[0], authflow.FlowDenied, authflow.DeniedDetail)
	a.flows.Sweep(ctx)
	if _, err := a.Flows().StartAuthorization(newcomer, "x", "http://127.0.0.1:1/cb", nil); err != nil {
		t.Fatalf("a flow for x after one of its flows ended: %v", err)
	}
}

// A start that fails after reserving its place (the provider refused a
// device flow, the store write failed) gives the place back once a sweep
// finds no record for it after authflow.ReserveGrace.
func TestReservationWithoutAFlowIsReleased(t *testing.T) {
	ctx := context.Background()
	env := newFlowEnv(t)
	b := env.primary(ctx, t, option.WithMaxFlows(1))
	if _, err := b.flows.Reserve(ctx, "x"); err != nil { // a start that went no further
		t.Fatal(err)
	}
	if _, err := b.Flows().StartAuthorization(ctx, "x", "http://127.0.0.1:1/cb", nil); !errors.Is(err, authflow.ErrTooManyFlows) {
		t.Fatalf("with the only place reserved: %v, want ErrTooManyFlows", err)
	}
	b.flows.Sweep(ctx)
	if _, err := b.Flows().StartAuthorization(ctx, "x", "http://127.0.0.1:1/cb", nil); !errors.Is(err, authflow.ErrTooManyFlows) {
		t.Fatalf("within the grace a start may still write its record: %v, want ErrTooManyFlows", err)
	}
	env.clk.Add(authflow.ReserveGrace)
	b.flows.Sweep(ctx)
	if _, err := b.Flows().StartAuthorization(ctx, "x", "http://127.0.0.1:1/cb", nil); err != nil {
		t.Fatalf("after the sweep dropped the orphan reservation: %v", err)
	}
}

// A replica that reserved a place and died before writing its flow record
// (or was removed for good) leaves an entry no replica remembers. With no
// flow records in the store, the other replicas' sweeps must still release
// it once its grace has passed, or ten such crashes lock a credential out
// of reauthentication for good.
func TestReservationOfADeadReplicaIsReleased(t *testing.T) {
	ctx := context.Background()
	env := newFlowEnv(t)
	dead := env.primary(ctx, t, option.WithMaxFlows(1))
	survivor := env.replica(t, "replica-b", time.Hour, option.WithMaxFlows(1))
	survivor.flows.Sweep(ctx) // its first sweep: nothing to release yet

	if _, err := dead.flows.Reserve(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	// The start that reserved never writes its record: the replica is gone.
	if _, err := survivor.Flows().StartAuthorization(ctx, "x", "http://127.0.0.1:1/cb", nil); !errors.Is(err, authflow.ErrTooManyFlows) {
		t.Fatalf("with the only place reserved: %v, want ErrTooManyFlows", err)
	}
	env.clk.Add(2 * authflow.ReserveGrace)
	survivor.flows.Sweep(ctx)
	if _, err := survivor.Flows().StartAuthorization(ctx, "x", "http://127.0.0.1:1/cb", nil); err != nil {
		t.Fatalf("after the dead replica's reservation expired: %v, want the flow started", err)
	}
}
