package broker

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/authflow"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/memstore"
)

// flowDeadline bounds every wait for a flow's asynchronous outcome;
// generous, since it is a deadline, not a measurement.
const flowDeadline = 20 * time.Second

// flowEnv is a store shared by replicas, a fake clock they and the
// simulator share, and a Salesforce credential "x" awaiting
// reauthentication.
type flowEnv struct {
	st   store.Store
	clk  *fakeclock.Clock
	sim  *providersim.Server
	spec credspec.Spec
	aud  *recordingAuditor
}

func newFlowEnv(t *testing.T) *flowEnv {
	t.Helper()
	clk := fakeclock.New(time.Now())
	sim := startSim(t, providersim.Config{Now: clk.Now, DeviceInterval: time.Second})
	// A realistic secret: errors redact every secret sent, and a one-letter
	// one would be cut out of the provider's error codes (slow_down).
	spec := simSpec(sim)
	spec.ClientSecret = "flow-test-client-secret-5b0e"
	sim.AddClient(providersim.Client{ID: spec.ClientID, Secret: spec.ClientSecret})
	return &flowEnv{st: memstore.New(), clk: clk, sim: sim, spec: spec, aud: &recordingAuditor{}}
}

// replica starts a broker on the shared store; its own sweeps are slow
// unless sweep says otherwise, so tests drive them with sweepFlows.
func (env *flowEnv) replica(t *testing.T, id string, sweep time.Duration, extra ...option.Option) *Broker {
	t.Helper()
	opts := append([]option.Option{option.WithReplicaID(id), option.WithFlowTiming(sweep, time.Second)}, extra...)
	return newBroker(t, Config{Store: env.st, Provider: newDetectProvider(), Auditor: env.aud}, replicaOpts(env.clk, opts...)...)
}

// primary starts replica "replica-a" (sweeps left to the test) and creates
// credential "x" through it.
func (env *flowEnv) primary(ctx context.Context, t *testing.T, extra ...option.Option) *Broker {
	t.Helper()
	b := env.replica(t, "replica-a", time.Hour, extra...)
	if _, err := b.Credentials().Create(ctx, "x", env.spec); err != nil {
		t.Fatal(err)
	}
	return b
}

// readFlowRecord reads the one flow record a test started.
func readFlowRecord(t *testing.T, st store.Store, state string) *authflow.Record {
	t.Helper()
	f, _, err := authflow.ReadRecord(context.Background(), st, state)
	if err != nil {
		t.Fatalf("read flow: %v", err)
	}
	return f
}

// awaitActivation waits, through AuthorizationCheck, for the flow to
// install a family.
func awaitActivation(t *testing.T, b *Broker, id, state string) authflow.Activation {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), flowDeadline)
	defer cancel()
	for ctx.Err() == nil {
		p, err := b.Flows().CheckAuthorization(ctx, id, state, 5*time.Second)
		if err != nil {
			t.Fatalf("check: %v", err)
		}
		if p.Activation != nil {
			return *p.Activation
		}
	}
	t.Fatalf("no activation within %s", flowDeadline)
	return authflow.Activation{}
}

// awaitFlow re-reads the flow record until cond holds.
func awaitFlow(t *testing.T, st store.Store, state, what string, cond func(*authflow.Record) bool) *authflow.Record {
	t.Helper()
	var f *authflow.Record
	poll.UntilSeen(t, flowDeadline, "flow "+what, func() (bool, string) {
		f = readFlowRecord(t, st, state)
		return cond(f), fmt.Sprintf("%+v", f)
	})
	return f
}

// A replica that dies leaves its lease to expire; until then nobody else
// polls, after it the next sweep of another replica takes the poll over and
// completes the flow: one exchange at the provider, one family.
func TestDeviceFlowTakeoverFromDeadPoller(t *testing.T) {
	ctx := context.Background()
	env := newFlowEnv(t)
	a := env.primary(ctx, t)
	p, err := a.Flows().StartDeviceAuthorization(ctx, "x", nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.UserCode == "" || p.Interval != time.Second || p.VerificationURI == "" {
		t.Fatalf("pending %+v: want a user code, the provider's 1s interval and its verification URI", p)
	}
	_ = a.Close() // releases the lease: rewrite it as a replica that died would have left it
	f, version, err := authflow.ReadRecord(ctx, env.st, p.State)
	if err != nil {
		t.Fatal(err)
	}
	f.Poller, f.LeaseUntil = "replica-a", env.clk.Now().Add(3*time.Second)
	if _, err := authflow.WriteRecord(ctx, env.st, p.State, f, version); err != nil {
		t.Fatal(err)
	}

	b := env.replica(t, "replica-b", time.Hour)
	b.flows.Sweep(ctx)
	if got := readFlowRecord(t, env.st, p.State); got.Poller != "replica-a" || b.flows.Polling(p.State) {
		t.Fatalf("replica b took over a live lease (poller %q)", got.Poller)
	}
	if err := env.sim.ApproveDevice(p.UserCode); err != nil {
		t.Fatal(err)
	}
	env.clk.Add(4 * time.Second) // the dead replica's lease runs out
	b.flows.Sweep(ctx)
	if got := readFlowRecord(t, env.st, p.State); got.Poller != "replica-b" {
		t.Fatalf("after the lease expired, poller %q, want replica-b", got.Poller)
	}
	act := awaitActivation(t, b, "x", p.State)
	if st := env.sim.Stats(); st.DeviceTokenExchanges != 1 {
		t.Errorf("provider exchanges %d, want 1", st.DeviceTokenExchanges)
	}
	tok, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x"})
	if err != nil || tok.FamilyID != act.FamilyID {
		t.Fatalf("token after the device flow: %+v %v, want family %s", tok, err, act.FamilyID)
	}
	if f := readFlowRecord(t, env.st, p.State); f.DeviceCode != "" || f.Status != authflow.StatusCompleted {
		t.Errorf("finished flow %+v: want completed, without its device code", f)
	}
}

// A replica that stops releases its leases, so another takes over at its
// next sweep instead of waiting for the lease to expire.
func TestDeviceFlowHandoverOnShutdown(t *testing.T) {
	ctx := context.Background()
	env := newFlowEnv(t)
	a := env.primary(ctx, t)
	p, err := a.Flows().StartDeviceAuthorization(ctx, "x", nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = a.Close()
	if f := readFlowRecord(t, env.st, p.State); f.Poller != "" {
		t.Fatalf("a closed replica kept its lease (poller %q)", f.Poller)
	}
	b := env.replica(t, "replica-b", 20*time.Millisecond)
	awaitFlow(t, env.st, p.State, "taken over", func(f *authflow.Record) bool { return f.Poller == "replica-b" })
	if err := env.sim.ApproveDevice(p.UserCode); err != nil {
		t.Fatal(err)
	}
	awaitActivation(t, b, "x", p.State)
	if n := env.aud.count(audit.ActionReauthenticated); n != 1 {
		t.Errorf("%d families installed, want 1", n)
	}
}

// slow_down adds 5 s to the interval, kept in the store (a replica taking
// over polls at the slower pace) and reported by AuthorizationCheck.
func TestDeviceFlowSlowDown(t *testing.T) {
	ctx := context.Background()
	env := newFlowEnv(t)
	a := env.primary(ctx, t)
	env.sim.SlowDownDevicePolls(1)
	p, err := a.Flows().StartDeviceAuthorization(ctx, "x", nil)
	if err != nil {
		t.Fatal(err)
	}
	awaitFlow(t, env.st, p.State, "slowed down", func(f *authflow.Record) bool { return f.Interval == 6*time.Second })
	got, err := a.Flows().CheckAuthorization(ctx, "x", p.State, 0)
	if err != nil || got.Device == nil || got.Device.Interval != 6*time.Second {
		t.Fatalf("check: %+v %v, want pending with a 6s interval", got.Device, err)
	}
}

// Flows expire, and are forgotten a while after they end; a check names
// one outcome at a time.
func TestFlowExpiryAndPruning(t *testing.T) {
	ctx := context.Background()
	env := newFlowEnv(t)
	b := env.primary(ctx, t)
	p, err := b.Flows().StartAuthorization(ctx, "x", "http://127.0.0.1:1/cb", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := b.Flows().CheckAuthorization(ctx, "x", p.State, 0); err != nil || got.Authorization == nil || got.Authorization.AuthorizeURL != p.AuthorizeURL {
		t.Fatalf("check of a fresh flow: %+v %v, want it pending with its authorize URL", got, err)
	}
	env.clk.Add(11 * time.Minute)
	var ae *authflow.AuthorizationError
	if _, err := b.Flows().CheckAuthorization(ctx, "x", p.State, 0); !errors.As(err, &ae) || ae.Reason != authflow.FlowExpired {
		t.Fatalf("check after 11m: %v, want expired", err)
	}
	b.flows.Sweep(ctx)
	if f := readFlowRecord(t, env.st, p.State); f.Status != authflow.StatusFailed || f.Failure != authflow.FlowExpired || f.Verifier != "" {
		t.Fatalf("swept flow %+v: want failed/expired without its verifier", f)
	}
	if _, err := b.Flows().CompleteAuthorization(ctx, "x", p.State, "some-code"); !isInvalidField(err, "state") {
		t.Fatalf("completing an expired flow: %v, want invalid state", err)
	}
	env.clk.Add(authflow.Retention)
	b.flows.Sweep(ctx)
	if _, err := env.st.Get(ctx, authflow.RecordKey(p.State)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("finished flow still stored after its retention: %v", err)
	}
	if _, err := b.Flows().CheckAuthorization(ctx, "x", p.State, 0); !isInvalidField(err, "state") {
		t.Fatalf("check of a forgotten flow: %v, want invalid state", err)
	}
}

// A flow is bound to its credential; a check waits within its bounds.
func TestCheckAuthorizationBounds(t *testing.T) {
	ctx := context.Background()
	env := newFlowEnv(t)
	b := env.replica(t, "replica-a", time.Hour)
	for _, id := range []string{"x", "y"} {
		if _, err := b.Credentials().Create(ctx, id, env.spec); err != nil {
			t.Fatal(err)
		}
	}
	p, err := b.Flows().StartAuthorization(ctx, "x", "http://127.0.0.1:1/cb", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Flows().CheckAuthorization(ctx, "y", p.State, 0); !isInvalidField(err, "state") {
		t.Fatalf("check under another credential: %v, want invalid state", err)
	}
	if _, err := b.Flows().CompleteAuthorization(ctx, "y", p.State, "code"); !isInvalidField(err, "state") {
		t.Fatalf("completing under another credential: %v, want invalid state", err)
	}
	if _, err := b.Flows().CheckAuthorization(ctx, "x", p.State, authflow.MaxCheckWait+time.Second); !isInvalidField(err, "authorization_check.wait") {
		t.Fatalf("wait over the maximum: %v, want invalid wait", err)
	}
	short, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	got, err := b.Flows().CheckAuthorization(short, "x", p.State, authflow.MaxCheckWait)
	if err != nil || got.Authorization == nil || short.Err() != nil {
		t.Fatalf("a wait longer than the deadline: %+v %v (ctx %v), want pending before the deadline", got, err, short.Err())
	}
	if _, err := b.Flows().StartAuthorization(ctx, "x", "", nil); !errors.Is(err, authflow.ErrCallbackNotConfigured) {
		t.Fatalf("server callback without a URL: %v, want ErrCallbackNotConfigured", err)
	}

	// A shutdown beginning answers waiting checks now, not a minute later.
	answered := make(chan error, 1)
	go func() {
		p, err := b.Flows().CheckAuthorization(ctx, "x", p.State, authflow.MaxCheckWait)
		if err == nil && p.Authorization == nil {
			err = errors.New("not pending")
		}
		answered <- err
	}()
	b.Flows().StopWaiting()
	select {
	case err := <-answered:
		if err != nil {
			t.Fatalf("check after StopWaiting: %v", err)
		}
	case <-time.After(flowDeadline):
		t.Fatal("a waiting check outlived StopWaiting")
	}
}

// Salesforce issues refresh tokens only for some scopes: a device flow that
// cannot yield one is refused before anything reaches the provider or the
// store.
func TestDeviceFlowScopeRefusal(t *testing.T) {
	ctx := context.Background()
	env := newFlowEnv(t)
	b := env.primary(ctx, t)
	if _, err := b.Flows().StartDeviceAuthorization(ctx, "x", []string{"api"}); !isInvalidField(err, "scopes") {
		t.Fatalf("device flow with scope api: %v, want invalid scopes", err)
	}
	if n := env.sim.Stats().DeviceAuthorizations; n != 0 {
		t.Errorf("the provider saw %d device authorizations", n)
	}
	if keys, err := env.st.List(ctx, authflow.RecordPrefix); err != nil || len(keys) != 0 {
		t.Errorf("flows stored: %v %v", keys, err)
	}
}

func isInvalidField(err error, field string) bool {
	var inv *brokererr.InvalidArgumentError
	return errors.As(err, &inv) && inv.Field == field
}

// The store holds a bounded number of flows, whoever starts them: past the
// bound a start is refused before anything reaches the provider or the
// store, and room returns once finished flows are forgotten.
func TestFlowStartsAreBounded(t *testing.T) {
	ctx := context.Background()
	env := newFlowEnv(t)
	b := env.primary(ctx, t, option.WithMaxFlows(2))
	for range 2 {
		if _, err := b.Flows().StartAuthorization(ctx, "x", "http://127.0.0.1:1/cb", nil); err != nil {
			t.Fatal(err)
		}
	}
	starts := env.sim.Stats().DeviceAuthorizations
	if _, err := b.Flows().StartAuthorization(ctx, "x", "http://127.0.0.1:1/cb", nil); !errors.Is(err, authflow.ErrTooManyFlows) {
		t.Fatalf("third code flow: %v, want ErrTooManyFlows", err)
	}
	if _, err := b.Flows().StartDeviceAuthorization(ctx, "x", nil); !errors.Is(err, authflow.ErrTooManyFlows) {
		t.Fatalf("device flow: %v, want ErrTooManyFlows", err)
	}
	if keys, _ := env.st.List(ctx, authflow.RecordPrefix); len(keys) != 2 || env.sim.Stats().DeviceAuthorizations != starts {
		t.Fatalf("refused starts left %d flows and %d device authorizations", len(keys), env.sim.Stats().DeviceAuthorizations-starts)
	}
	// Expired, then forgotten: room again.
	env.clk.Add(11 * time.Minute)
	b.flows.Sweep(ctx)
	env.clk.Add(11 * time.Minute)
	b.flows.Sweep(ctx)
	if _, err := b.Flows().StartAuthorization(ctx, "x", "http://127.0.0.1:1/cb", nil); err != nil {
		t.Fatalf("after the old flows were forgotten: %v", err)
	}
}
