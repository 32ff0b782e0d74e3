package broker

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/memstore"
)

// An import stores its token together with the claim for the refresh that
// proves it: install and claim are one family write, the result the
// second. (Before: install, claim and result, three writes, each waiting
// for a store commit.) It reads no family record: the install's
// check-and-set on the cached version says whether one changed.

// familyPutCounter counts family record writes (conflicting ones too) and
// reads.
type familyPutCounter struct {
	store.Store
	puts, gets atomic.Int64
}

func (c *familyPutCounter) Get(ctx context.Context, key string) (store.Record, error) {
	if strings.HasPrefix(key, "families/") {
		c.gets.Add(1)
	}
	return c.Store.Get(ctx, key)
}

func (c *familyPutCounter) Put(ctx context.Context, key string, value []byte, expected uint64) (uint64, error) {
	if strings.HasPrefix(key, "families/") {
		c.puts.Add(1)
	}
	return c.Store.Put(ctx, key, value, expected)
}

func TestImportWritesItsFamilyTwiceAndReadsItNever(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(time.Now())
	sim := startSim(t, providersim.Config{Now: clk.Now})
	st := &familyPutCounter{Store: memstore.New()}
	b := newTestBroker(t, st, replicaOpts(clk)...)
	if _, err := b.Credentials().Create(ctx, "x", simSpec(sim)); err != nil {
		t.Fatal(err)
	}
	rt, _ := sim.IssueRefreshToken("c", nil)
	act, err := b.ImportRefreshToken(ctx, "x", rt)
	if err != nil || act.Unproven || act.Generation != 1 {
		t.Fatalf("import: %+v %v, want proven at generation 1", act, err)
	}
	if n := st.puts.Load(); n != 2 {
		t.Errorf("family writes per import: %d, want 2 (install with the claim, result)", n)
	}
	if n := st.gets.Load(); n != 0 {
		t.Errorf("family reads per import: %d, want none", n)
	}
	if n := sim.Stats().RefreshRequests; n != 1 {
		t.Errorf("refreshes at the provider: %d, want the one proving refresh", n)
	}
	fam := storedFamily(ctx, t, st)
	if fam.State() != family.StateActive || fam.Unproven || fam.Claim != nil {
		t.Errorf("stored family after the import: %s, unproven %v, claim %+v; want active, proven, unclaimed", fam.State(), fam.Unproven, fam.Claim)
	}
}

// A replica that dies right after an import's install write leaves the
// family claimed by itself, unproven: another replica waits for that
// claim's deadline, as for any claim (the dead one may have presented the
// token), then takes it over and proves the token with one refresh.
func TestInstallClaimOfADeadImporterIsTakenOverAtItsDeadline(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(time.Now())
	mem := memstore.New()
	sim, bs, spec := setup(t, mem, clk)
	a, b := bs[0], bs[1]
	if _, err := a.Credentials().Create(ctx, "x", spec); err != nil {
		t.Fatal(err)
	}
	rt, _ := sim.IssueRefreshToken("c", nil)
	ea, err := a.entry(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	// A's import up to its install write; A dies before its proving
	// refresh.
	_, in, err := a.installFamily(ctx, ea, "", rt, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	in.logged()
	fam := storedFamily(ctx, t, mem)
	if fam.Claim == nil || fam.Claim.Holder != a.opts.ReplicaID || !fam.Unproven {
		t.Fatalf("stored after the install: claim %+v, unproven %v; want A's claim on an unproven family", fam.Claim, fam.Unproven)
	}

	type answer struct {
		tok access.Token
		err error
	}
	got := make(chan answer, 1)
	go func() {
		tok, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x"})
		got <- answer{tok, err}
	}()
	poll.Until(t, 10*time.Second, "B waits for A's claim", func() bool { return b.metrics.ClaimWaits.Load() > 0 })
	if n := sim.Stats().RefreshRequests; n != 0 {
		t.Fatalf("B refreshed %d times under A's live claim", n)
	}
	clk.Add(a.opts.ClaimTTLFor(spec) + time.Second) // past A's deadline
	var ans answer
	select {
	case ans = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("B still waits after A's claim expired: the family is stuck")
	}
	if ans.err != nil || ans.tok.Generation != 1 {
		t.Fatalf("B after the takeover: generation %d, %v; want the proven token", ans.tok.Generation, ans.err)
	}
	if n := sim.Stats().RefreshRequests; n != 1 {
		t.Errorf("refreshes at the provider: %d, want B's one", n)
	}
	fam = storedFamily(ctx, t, mem)
	if fam.State() != family.StateActive || fam.Unproven || fam.InDoubt {
		t.Errorf("stored after the takeover: %s, unproven %v, in doubt %v; want active and proven", fam.State(), fam.Unproven, fam.InDoubt)
	}
}

// An import that joins a refresh of the family it replaced (a flight that
// stored its rotation just before the install's write, and is still
// finishing) is not served by that flight's answer: it names the old
// family, and nothing presented the imported token yet. The import runs
// its own proving refresh under the install's claim instead of answering
// "proven" with the old family's generation and leaving the claim held.
func TestImportJoiningARefreshOfTheReplacedFamilyStillProvesItsToken(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(time.Now())
	sim := startSim(t, providersim.Config{Now: clk.Now})
	st := memstore.New()
	b := newTestBroker(t, st, replicaOpts(clk)...)
	if _, err := b.Credentials().Create(ctx, "x", simSpec(sim)); err != nil {
		t.Fatal(err)
	}
	first, _ := sim.IssueRefreshToken("c", nil)
	if _, err := b.ImportRefreshToken(ctx, "x", first); err != nil {
		t.Fatal(err)
	}
	e, err := b.entry(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	old := e.view.Load()
	refreshes := sim.Stats().RefreshRequests

	// The old family's flight, past its result write.
	f := &flight{done: make(chan struct{})}
	e.mu.Lock()
	e.flight = f
	e.mu.Unlock()

	second, _ := sim.IssueRefreshToken("c", nil)
	type answer struct {
		famID string
		gen   uint64
		err   error
	}
	got := make(chan answer, 1)
	go func() {
		act, err := b.ImportRefreshToken(ctx, "x", second)
		got <- answer{act.FamilyID, act.Generation, err}
	}()
	poll.Until(t, 10*time.Second, "the import's install is stored", func() bool {
		return storedFamily(ctx, t, st).FamilyID != old.fam.FamilyID
	})
	e.mu.Lock()
	f.v, e.flight = old, nil
	e.mu.Unlock()
	close(f.done)

	ans := <-got
	if ans.err != nil {
		t.Fatalf("import: %v", ans.err)
	}
	fam := storedFamily(ctx, t, st)
	if fam.FamilyID != ans.famID || fam.Unproven || fam.Claim != nil || ans.gen != 1 {
		t.Errorf("after the import: stored family %s unproven %v claim %+v, answered generation %d; want the import's family proven, unclaimed, generation 1",
			fam.FamilyID, fam.Unproven, fam.Claim, ans.gen)
	}
	if n := sim.Stats().RefreshRequests - refreshes; n != 1 {
		t.Errorf("refreshes at the provider for the import: %d, want its one proving refresh", n)
	}
}
