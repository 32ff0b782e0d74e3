package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/option"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/fositeserver"
	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/vaultstore"
)

// Duties done once, not once per replica: replicas sharing a Vault store
// split early detection, idle refreshes and the flow sweep by duty leases
// (broker/internal/lease). These tests run the replicas in-process on a
// real Vault dev server, against ory/fosite.

const (
	// dutyLeasePeriod is short so takeovers happen within seconds; every
	// replica writes the lease record ten times a period.
	dutyLeasePeriod = 2 * time.Second
	// dutyLeaseKey is the lease record (lease.Key): the tests count the
	// writes to it, and fail if they see none.
	dutyLeaseKey = "meta/duty-leases"
	dutyShards   = 64
)

// leaseStore is one replica's view of the shared store: it counts the
// replica's lease writes, and can be cut — every call fails from then on,
// as for a replica killed or cut off, and no goodbye reaches the store.
// With raced set, another writer rewrites the lease record after each of
// the replica's reads, so that its next write conflicts.
type leaseStore struct {
	store.Store
	cut, raced  atomic.Bool
	leaseWrites atomic.Int64
}

var errReplicaCut = errors.New("test: replica cut off")

func (s *leaseStore) Get(ctx context.Context, key string) (store.Record, error) {
	if s.cut.Load() {
		return store.Record{}, errReplicaCut
	}
	rec, err := s.Store.Get(ctx, key)
	if err == nil && key == dutyLeaseKey && s.raced.Load() {
		_, _ = s.Store.Put(ctx, key, rec.Value, rec.Version)
	}
	return rec, err
}

func (s *leaseStore) Put(ctx context.Context, key string, value []byte, expected uint64) (uint64, error) {
	if s.cut.Load() {
		return 0, errReplicaCut
	}
	if key == dutyLeaseKey {
		s.leaseWrites.Add(1)
	}
	return s.Store.Put(ctx, key, value, expected)
}

func (s *leaseStore) Delete(ctx context.Context, key string) error {
	if s.cut.Load() {
		return errReplicaCut
	}
	return s.Store.Delete(ctx, key)
}

func (s *leaseStore) List(ctx context.Context, prefix string) ([]string, error) {
	if s.cut.Load() {
		return nil, errReplicaCut
	}
	return s.Store.List(ctx, prefix)
}

// dutyCluster is replicas sharing one Vault store, each with its
// leaseStore (stores[i] is replicas[i]'s).
type dutyCluster struct {
	t        *testing.T
	replicas []*env
	mu       sync.Mutex
	stores   []*leaseStore
}

func newDutyCluster(t *testing.T, n int, opts ...option.Option) *dutyCluster {
	t.Helper()
	c := &dutyCluster{t: t}
	eo := envOptions{vault: vaulttest.StartDev(t), brokerOpts: append([]option.Option{option.WithDutyLeasePeriod(dutyLeasePeriod)}, opts...),
		wrapStore: func(st store.Store) store.Store {
			ls := &leaseStore{Store: st}
			c.mu.Lock()
			defer c.mu.Unlock()
			c.stores = append(c.stores, ls)
			return ls
		}}
	c.replicas = append(c.replicas, newEnv(t, eo))
	c.grow(n - 1)
	return c
}

// grow starts n more replicas.
func (c *dutyCluster) grow(n int) {
	c.t.Helper()
	for range n {
		c.replicas = append(c.replicas, c.replicas[0].replica())
	}
}

func (c *dutyCluster) store(i int) *leaseStore {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stores[i]
}

// owned is how many shards each replica in idx holds now.
func (c *dutyCluster) owned(idx ...int) []int {
	out := make([]int, len(idx))
	for j, i := range idx {
		out[j] = c.replicas[i].broker.Stats().Duties.Owned
	}
	return out
}

// settled reports whether the replicas in idx hold every shard between
// them, none above the fair share ⌈64/n⌉ (so none below what the others
// leave).
func (c *dutyCluster) settled(idx ...int) bool {
	fair := (dutyShards + len(idx) - 1) / len(idx)
	total := 0
	for _, n := range c.owned(idx...) {
		if n > fair || n < dutyShards-(len(idx)-1)*fair {
			return false
		}
		total += n
	}
	return total == dutyShards
}

func (c *dutyCluster) all() []int {
	idx := make([]int, len(c.replicas))
	for i := range idx {
		idx[i] = i
	}
	return idx
}

// A fresh replica alone holds every duty the moment it serves; a joining
// replica gets its share (the others give back what exceeds theirs).
func TestJoiningReplicaTakesAShareOfTheDuties(t *testing.T) {
	c := newDutyCluster(t, 1)
	if got := c.owned(0)[0]; got != dutyShards {
		t.Fatalf("a lone fresh replica holds %d shards when it serves, want all %d", got, dutyShards)
	}
	c.grow(1)
	awaitCondition(t, "two replicas share the duties", func() bool { return c.settled(0, 1) })
	joined := time.Now()
	c.grow(1)
	awaitCondition(t, "the third replica gets its share", func() bool { return c.settled(0, 1, 2) })
	t.Logf("a joining replica had its share %s after it started; shards now %v", time.Since(joined).Round(time.Millisecond), c.owned(c.all()...))
}

// A replica killed (cut off from the store: no goodbye, no more writes)
// has its shards taken over by the others within one lease period.
func TestKilledReplicasDutiesTakenOverWithinOneLeasePeriod(t *testing.T) {
	c := newDutyCluster(t, 3)
	awaitCondition(t, "three replicas share the duties", func() bool { return c.settled(0, 1, 2) })
	before := c.replicas[1].broker.Stats().Duties.Handovers + c.replicas[2].broker.Stats().Duties.Handovers
	c.store(0).cut.Store(true)
	killed := time.Now()
	awaitCondition(t, "the survivors hold every shard", func() bool { return c.settled(1, 2) })
	took := time.Since(killed)
	t.Logf("a killed replica's duties were taken over in %s (lease period %s)", took.Round(time.Millisecond), dutyLeasePeriod)
	if took > dutyLeasePeriod {
		t.Errorf("the killed replica's shards were taken over after %s, more than the lease period %s", took, dutyLeasePeriod)
	}
	if got := c.owned(0)[0]; got != 0 {
		t.Errorf("the killed replica still does the duties of %d shards", got)
	}
	after := c.replicas[1].broker.Stats().Duties.Handovers + c.replicas[2].broker.Stats().Duties.Handovers
	if after-before < dutyShards-2*((dutyShards+2)/3) {
		t.Errorf("%d handovers counted, want at least the killed replica's share", after-before)
	}
}

// Another writer that always writes the lease record between a replica's
// read and its write makes every lease write conflict: each replica still
// writes at most lease.MaxWritesPerSecond (2 a tick, burst 3), instead of
// retrying at Vault's pace.
func TestLeaseWritesStayUnderTheBoundOnVault(t *testing.T) {
	c := newDutyCluster(t, 3)
	awaitCondition(t, "three replicas share the duties", func() bool { return c.settled(0, 1, 2) })
	start := time.Now() // before the counts restart: the window is no shorter than counted
	for i := range c.replicas {
		c.store(i).leaseWrites.Store(0)
		c.store(i).raced.Store(true)
	}
	awaitCondition(t, "20 conflicts at every replica", func() bool {
		for _, r := range c.replicas {
			if r.broker.Stats().Duties.Conflicts < 20 {
				return false
			}
		}
		return true
	})
	elapsed := time.Since(start)
	perSecond := 2 * 10 / dutyLeasePeriod.Seconds() // lease.MaxWritesPerSecond
	bound := perSecond*elapsed.Seconds() + 3
	for i := range c.replicas {
		got := c.store(i).leaseWrites.Load()
		t.Logf("replica %d: %d lease writes in %s, each conflicting: %.1f/s, bound %.1f/s (+3 burst)", i, got, elapsed.Round(time.Millisecond), float64(got)/elapsed.Seconds(), perSecond)
		if float64(got) > bound {
			t.Errorf("replica %d wrote the lease record %d times in %s, above the bound %.0f", i, got, elapsed, bound)
		}
	}
}

// The introspection calls the provider sees per credential per interval
// do not grow with the replicas: with 5 they are at most 1.2 × those with
// 1 (or than the schedule, when one replica cannot keep it). Measured at
// fosite, as the time the provider takes to see a fixed number of
// introspections with 1 replica, then with 5.
func TestIntrospectionCallsDoNotGrowWithReplicas(t *testing.T) {
	const (
		credentials = 16
		interval    = 200 * time.Millisecond
		intervals   = 15 // measured per phase
		maxRatio    = 1.2
	)
	c := newDutyCluster(t, 1, option.WithIntrospectionInterval(interval))
	fs := startFosite(t, fositeserver.Config{AccessTokenLifespan: accessLifetime})
	for i := range credentials {
		// The import's proving refresh brings an access token that
		// corroborates the checks (fosite is a generic provider).
		addFositeCredential(t, c.replicas[0], fs, fmt.Sprintf("tenant-%02d", i), func(fs *fositeserver.Server, s *rotavaultv1.CredentialSpec) {
			s.IntrospectionUrl = fs.IntrospectionURL()
		})
	}
	// rate measures the introspections per credential per interval: the
	// time fosite takes to see credentials × intervals of them, after one
	// interval of warm-up (the first checks spread over an interval).
	rate := func(phase string) float64 {
		warm := fs.Introspections() + credentials
		awaitCondition(t, phase+": warm-up", func() bool { return fs.Introspections() >= warm })
		from, start := fs.Introspections(), time.Now()
		want := from + credentials*intervals
		poll := func() bool { return fs.Introspections() >= want }
		awaitCondition(t, phase+": introspections", poll)
		elapsed := time.Since(start)
		got := float64(fs.Introspections()-from) / credentials / (float64(elapsed) / float64(interval))
		t.Logf("%s: %d introspections in %s: %.2f per credential per interval", phase, fs.Introspections()-from, elapsed.Round(time.Millisecond), got)
		return got
	}
	one := rate("1 replica")
	c.grow(4)
	awaitCondition(t, "five replicas share the duties", func() bool { return c.settled(c.all()...) })
	five := rate("5 replicas")
	// One replica on a loaded machine may not keep its schedule (its
	// introspection concurrency is a fifth of five replicas'): the schedule
	// itself, one call per credential per interval, is then the baseline.
	// Five replicas each checking every family would be about 5.
	baseline := max(one, 1.0)
	ratio := five / baseline
	t.Logf("introspection calls per credential per interval, 5 replicas ÷ max(1 replica, the schedule): %.2f (goal ≤ %.1f)", ratio, maxRatio)
	if ratio > maxRatio {
		t.Errorf("5 replicas cost the provider %.2f × the introspections of 1; want ≤ %.1f", ratio, maxRatio)
	}
	if s := fs.Stats(); s.InvalidGrants != 0 {
		t.Errorf("fosite refused a grant: %+v", s)
	}
}

// leaseTable is the lease record as rotavault writes it (lease.table):
// read straight from Vault to watch replica processes.
type leaseTable struct {
	Members map[string]uint64 `json:"members"`
	Shards  []struct {
		Holder string `json:"h"`
	} `json:"shards"`
}

// readLeaseTable reads the lease record under prefix; nil when absent or
// unreadable (the caller awaits a condition on it).
func readLeaseTable(ctx context.Context, st store.Store) *leaseTable {
	rec, err := st.Get(ctx, dutyLeaseKey)
	if err != nil {
		return nil
	}
	var lt leaseTable
	if json.Unmarshal(rec.Value, &lt) != nil {
		return nil
	}
	return &lt
}

// heldByMembers reports whether lt has n members and every shard is held
// by one of them.
func (lt *leaseTable) heldByMembers(n int) bool {
	if lt == nil || len(lt.Members) != n || len(lt.Shards) != dutyShards {
		return false
	}
	for _, s := range lt.Shards {
		if _, ok := lt.Members[s.Holder]; !ok {
			return false
		}
	}
	return true
}

// A replica process killed with SIGKILL (no goodbye) has its shards taken
// over by the other processes within one lease period, as the lease record
// in Vault shows.
func TestKilledReplicaProcessDutiesTakenOverWithinOneLeasePeriod(t *testing.T) {
	v := vaulttest.StartDev(t)
	const prefix = "rotavault/duties"
	args := []string{"--refresh-claim-ttl", killClaimTTL, "--refresh-claim-margin", killClaimMargin, "--vault-prefix", prefix,
		"--duty-lease-period", dutyLeasePeriod.String()}
	env := []string{"VAULT_ADDR=" + v.Addr, "VAULT_TOKEN=" + v.Token}
	var procs []*replicaProcess
	for range 3 {
		procs = append(procs, startVaultReplicaClaims(t, env, args))
	}
	st, err := vaultstore.New(context.Background(), vaultstore.Config{Client: v.Client(t), Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	var before *leaseTable
	awaitCondition(t, "three processes hold every shard", func() bool {
		before = readLeaseTable(ctx, st)
		return before.heldByMembers(3)
	})
	procs[0].kill()
	killed := time.Now()
	var after *leaseTable
	awaitCondition(t, "two processes hold every shard", func() bool {
		after = readLeaseTable(ctx, st)
		return after.heldByMembers(2)
	})
	took := time.Since(killed)
	t.Logf("a SIGKILLed replica's duties were taken over in %s (lease period %s)", took.Round(time.Millisecond), dutyLeasePeriod)
	if took > dutyLeasePeriod {
		t.Errorf("the killed process's shards were taken over after %s, more than the lease period %s", took, dutyLeasePeriod)
	}
	for id := range after.Members {
		if _, ok := before.Members[id]; !ok {
			t.Errorf("member %s appeared from nowhere", id)
		}
	}
}
