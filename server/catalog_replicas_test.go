package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker"
	"github.com/rotavault/rotavault/broker/catalog"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/vaultstore"
)

// Consumer-catalog merges are a duty shared among replicas (issue 14):
// each replica writes what it served to inboxes, and the holder of a
// shard merges them into the catalog records once for all replicas. These
// tests run real brokers (duty leases, catalog) on one real Vault dev
// server, each replica with a Vault client of its own, and drive each
// replica's issuance counter minute by minute on a shared fake clock.

// catalogWriteCounts counts one replica's catalog work on the store, and
// can be cut off: every call fails from then on, as for a replica killed
// (no goodbye reaches the store). With cutAfterMerge set, it cuts itself
// off right after its first catalog record write: a holder killed between
// a merge and the deletion of the batches it merged.
type catalogWriteCounts struct {
	store.Store
	records, inbox, deletes atomic.Int64
	cut, cutAfterMerge      atomic.Bool
}

var errCut = errors.New("test: replica cut off")

func (s *catalogWriteCounts) Get(ctx context.Context, key string) (store.Record, error) {
	if s.cut.Load() {
		return store.Record{}, errCut
	}
	return s.Store.Get(ctx, key)
}

func (s *catalogWriteCounts) Put(ctx context.Context, key string, value []byte, expected uint64) (uint64, error) {
	if s.cut.Load() {
		return 0, errCut
	}
	v, err := s.Store.Put(ctx, key, value, expected)
	switch {
	case strings.HasPrefix(key, catalog.KeyPrefix):
		s.records.Add(1)
		if err == nil && s.cutAfterMerge.Load() {
			s.cut.Store(true)
		}
	case strings.HasPrefix(key, catalog.InboxPrefix):
		s.inbox.Add(1)
	}
	return v, err
}

func (s *catalogWriteCounts) Delete(ctx context.Context, key string) error {
	if s.cut.Load() {
		return errCut
	}
	if strings.HasPrefix(key, catalog.InboxPrefix) {
		s.deletes.Add(1)
	}
	return s.Store.Delete(ctx, key)
}

func (s *catalogWriteCounts) List(ctx context.Context, prefix string) ([]string, error) {
	if s.cut.Load() {
		return nil, errCut
	}
	return s.Store.List(ctx, prefix)
}

func (s *catalogWriteCounts) ListPage(ctx context.Context, prefix, after string, limit int) ([]string, bool, error) {
	if s.cut.Load() {
		return nil, false, errCut
	}
	return s.Store.ListPage(ctx, prefix, after, limit)
}

// fakeTime is the replicas' shared clock.
type fakeTime struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeTime) now() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.t }
func (f *fakeTime) add(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

// catalogReplica is one replica: a broker on its own Vault client and the
// issuance counter the transport would run.
type catalogReplica struct {
	counts  *catalogWriteCounts
	broker  *broker.Broker
	counter *issuanceCounter
}

// catalogCluster is replicas sharing one Vault, on one fake clock.
type catalogCluster struct {
	t     *testing.T
	vault *vaulttest.Server
	clock *fakeTime
	// served is what the replicas counted: credential → identity → tokens.
	mu     sync.Mutex
	served map[string]map[string]uint64
}

const catalogTestInterval = time.Minute

func newCatalogCluster(t *testing.T) *catalogCluster {
	return &catalogCluster{t: t, vault: vaulttest.StartDev(t), clock: &fakeTime{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)},
		served: make(map[string]map[string]uint64)}
}

// replica starts one replica; opts come after the test's defaults.
func (c *catalogCluster) replica(opts ...option.Option) *catalogReplica {
	t := c.t
	t.Helper()
	ctx := context.Background()
	// Other replicas' batches show in a listing within ListRefresh: short,
	// as the simulated minutes pass in milliseconds.
	vs, err := vaultstore.New(ctx, vaultstore.Config{Client: c.vault.Client(t), ListRefresh: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = vs.Close() })
	r := &catalogReplica{counts: &catalogWriteCounts{Store: vs}}
	r.broker, err = broker.New(ctx, broker.Config{Store: r.counts, Provider: provider.New(nil), Auditor: &recordingAuditor{}},
		append([]option.Option{option.WithSchedulerInterval(time.Hour), option.WithIntrospectionInterval(0),
			option.WithDutyLeasePeriod(time.Second)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.broker.Close() })
	r.counter = newIssuanceCounter(nil, r.broker.Catalog(), catalogTestInterval, slog.New(slog.DiscardHandler))
	r.counter.now = c.clock.now
	t.Cleanup(func() { r.counter.once.Do(func() { close(r.counter.stop); <-r.counter.stopped }) })
	return r
}

// createCredentials creates n credentials through r.
func (c *catalogCluster) createCredentials(r *catalogReplica, n int) []string {
	c.t.Helper()
	var ids []string
	for i := range n {
		id := fmt.Sprintf("cred-%03d", i)
		spec := credspec.Spec{ProviderKind: credspec.ProviderSalesforce, BaseURL: "http://127.0.0.1:1", ClientID: "c", ClientSecret: "s", Scopes: []string{"api", "refresh_token"}}
		if _, err := r.broker.Credentials().Create(context.Background(), id, spec); err != nil {
			c.t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// serve has r hand one token of each credential to each identity.
func (c *catalogCluster) serve(r *catalogReplica, creds, identities []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cred := range creds {
		for _, id := range identities {
			r.counter.add(id, cred)
			if c.served[cred] == nil {
				c.served[cred] = make(map[string]uint64)
			}
			c.served[cred][id]++
		}
	}
}

// minute serves one minute's tokens on every replica in rs and flushes
// each replica as its ticker would: replicas started at different times,
// so their flushes are spread over the minute (replica i at i/len(rs) of
// it).
func (c *catalogCluster) minute(rs []*catalogReplica, creds, identities []string) {
	c.t.Helper()
	for _, r := range rs {
		c.serve(r, creds, identities)
	}
	for _, r := range rs {
		c.clock.add(catalogTestInterval / time.Duration(len(rs)))
		if err := r.counter.flushSome(testCtx(c.t), false, false); err != nil {
			c.t.Logf("flush: %v (kept for the next)", err)
		}
	}
}

// writes sums the replicas' catalog record writes, inbox writes and inbox
// deletions.
func writes(rs []*catalogReplica) (records, inbox, deletes int64) {
	for _, r := range rs {
		records += r.counts.records.Load()
		inbox += r.counts.inbox.Load()
		deletes += r.counts.deletes.Load()
	}
	return
}

// settle waits until rs hold every shard between them.
func settle(t *testing.T, rs ...*catalogReplica) {
	t.Helper()
	poll.Until(t, 20*time.Second, fmt.Sprintf("%d replicas share the duties", len(rs)), func() bool {
		total := 0
		for _, r := range rs {
			n := r.broker.Stats().Duties.Owned
			if n == 0 {
				return false
			}
			total += n
		}
		return total == 64
	})
}

// checkExact flushes and merges everything through r and compares the
// catalog with what the replicas served, and checks no inbox is left.
func (c *catalogCluster) checkExact(live []*catalogReplica) {
	t := c.t
	t.Helper()
	for _, r := range live {
		if err := r.counter.flushSome(testCtx(t), true, true); err != nil {
			t.Fatalf("full flush: %v", err)
		}
	}
	got := make(map[string]map[string]uint64)
	after := catalog.Cursor{}
	for {
		page, more, err := live[0].broker.Catalog().List(testCtx(t), "", after, 500)
		if err != nil {
			t.Fatal(err)
		}
		for _, cons := range page {
			if got[cons.CredentialID] == nil {
				got[cons.CredentialID] = make(map[string]uint64)
			}
			got[cons.CredentialID][cons.Identity] = cons.Count
		}
		if !more {
			break
		}
		after = catalog.Cursor{CredentialID: page[len(page)-1].CredentialID, Identity: page[len(page)-1].Identity}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	wrong := 0
	for cred, ids := range c.served {
		for id, n := range ids {
			if got[cred][id] != n {
				wrong++
				if wrong <= 5 {
					t.Errorf("%s by %s: catalog counts %d tokens, the replicas served %d", cred, id, got[cred][id], n)
				}
			}
		}
	}
	if wrong > 0 {
		t.Errorf("%d consumers counted wrong", wrong)
	}
	// Other replicas' deletions show in a listing within ListRefresh.
	poll.UntilSeen(t, 10*time.Second, "every inbox empty after a full flush", func() (bool, string) {
		for shard := range 64 {
			keys, _, err := live[0].counts.Store.ListPage(testCtx(t), fmt.Sprintf("%s%02d/", catalog.InboxPrefix, shard), "", 10)
			if err != nil || len(keys) > 0 {
				return false, fmt.Sprintf("shard %d: %v %v", shard, keys, err)
			}
		}
		return true, ""
	})
}

// Five replicas serving the same credentials to the same consumers cost
// the store about the catalog record writes of one: the holder of each
// shard merges all replicas' uses of a credential with one write per
// period. Each replica's own catalog cost is its inbox batches, at most one
// per shard per flush. Without sharing (duty leases off: each replica
// merges what it served, as before) five replicas cost five times the
// record writes. Counts add up exactly in every phase.
func TestCatalogWritesDoNotGrowWithReplicas(t *testing.T) {
	const (
		credentials = 128
		warmup      = 12 // minutes before counting: first merges, phases aligned
		measured    = 40 // minutes counted: four periods
		maxRatio    = 1.2
	)
	identities := []string{"spiffe://example.org/billing", "spiffe://example.org/reports"}
	c := newCatalogCluster(t)
	one := c.replica()
	creds := c.createCredentials(one, credentials)

	phase := func(name string, rs []*catalogReplica) (records, inbox int64) {
		w0, _, _ := writes(rs)
		for range warmup {
			c.minute(rs, creds, identities)
		}
		r0, i0, d0 := writes(rs)
		t.Logf("%s: %d catalog record writes in the %d minutes of warm-up (first uses on each replica, shards taken over)", name, r0-w0, warmup)
		for range measured {
			c.minute(rs, creds, identities)
		}
		r1, i1, d1 := writes(rs)
		records, inbox = r1-r0, i1-i0
		t.Logf("%s: %d catalog record writes in %d minutes (%.2f per credential per period of %d), %d inbox batch writes (%.1f per replica per flush), %d batch deletions",
			name, records, measured, float64(records)/credentials/(measured/catalog.Periods), catalog.Periods,
			inbox, float64(inbox)/float64(len(rs))/measured, d1-d0)
		return records, inbox
	}
	oneRecords, _ := phase("1 replica", []*catalogReplica{one})
	c.checkExact([]*catalogReplica{one})

	five := []*catalogReplica{one}
	for range 4 {
		five = append(five, c.replica())
	}
	settle(t, five...)
	fiveRecords, fiveInbox := phase("5 replicas", five)
	c.checkExact(five)
	ratio := float64(fiveRecords) / float64(oneRecords)
	t.Logf("catalog record writes, 5 replicas ÷ 1: %.2f (goal ≤ %.1f); inbox batches per replica per flush: %.1f (at most one per shard with uses: 64)",
		ratio, maxRatio, float64(fiveInbox)/5/measured)
	if ratio > maxRatio {
		t.Errorf("5 replicas made %.2f × the catalog record writes of 1; want ≤ %.1f", ratio, maxRatio)
	}
	if perFlush := float64(fiveInbox) / 5 / measured; perFlush > 64 {
		t.Errorf("%.1f inbox writes per replica per flush; want at most one per shard", perFlush)
	}

	// The same five replicas' work without sharing: what each replica
	// cost before the inboxes.
	var direct []*catalogReplica
	for range 5 {
		direct = append(direct, c.replica(option.WithDutyLeasePeriod(0)))
	}
	directRecords, _ := phase("5 replicas, duty sharing off (each merges its own uses)", direct)
	c.checkExact(direct)
	t.Logf("without sharing: %.2f × one replica's record writes", float64(directRecords)/float64(oneRecords))
}

// Nothing is lost or counted twice when the holder of shards is killed
// between merging batches into catalog records and deleting them (its
// successor merges the same batches: the records' marks skip them), when
// its shards move to the survivors, and when a restarted replica takes its
// share back (a lease handover while replicas keep serving).
func TestCatalogCountsExactAcrossHolderDeathAndHandover(t *testing.T) {
	identities := []string{"spiffe://example.org/a", "spiffe://example.org/b"}
	c := newCatalogCluster(t)
	rs := []*catalogReplica{c.replica(), c.replica(), c.replica()}
	creds := c.createCredentials(rs[0], 48)
	settle(t, rs...)
	for range 3 {
		c.minute(rs, creds, identities)
	}
	// A new consumer: every holder merges at once. The victim serves and
	// flushes its inboxes, then dies after its first catalog record write
	// of the merge that follows.
	victim := rs[2]
	fresh := append(identities, "spiffe://example.org/new")
	for _, r := range rs {
		c.serve(r, creds, fresh)
	}
	c.clock.add(catalogTestInterval)
	for _, r := range rs[:2] {
		_ = r.counter.flushSome(testCtx(t), false, false)
	}
	victim.counts.cutAfterMerge.Store(true)
	_ = victim.counter.flushSome(testCtx(t), false, false)
	if !victim.counts.cut.Load() {
		t.Fatal("the victim merged nothing: no holder was killed mid-merge")
	}
	leftBehind := 0
	for shard := range 64 {
		keys, _, err := rs[0].counts.Store.ListPage(testCtx(t), fmt.Sprintf("%s%02d/", catalog.InboxPrefix, shard), "", 100)
		if err != nil {
			t.Fatal(err)
		}
		leftBehind += len(keys)
	}
	t.Logf("batches left by the killed holder and the others: %d", leftBehind)
	survivors := rs[:2]
	settle(t, survivors...)
	for range 12 { // past a merge point of every credential
		c.minute(survivors, creds, fresh)
	}
	// The victim restarts as a new replica: shards move to it while the
	// replicas serve.
	back := c.replica()
	live := append(survivors, back)
	for range 3 {
		c.minute(live, creds, fresh)
	}
	settle(t, live...)
	for range 12 {
		c.minute(live, creds, fresh)
	}
	c.checkExact(live)
	var merges int64
	for _, r := range live {
		merges += r.broker.Stats().Catalog.Merges
	}
	if merges == 0 {
		t.Error("no replica merged an inbox")
	}
}

// A consumer shows in the catalog within two flush intervals of its first
// token with replicas on Vault: the serving replica writes it to its inbox
// at its flush, and the holder of the credential's shard merges it at its
// next one, not at the credential's merge point.
func TestNewConsumerListedWithinTwoFlushesOnVault(t *testing.T) {
	c := newCatalogCluster(t)
	a, b := c.replica(), c.replica()
	creds := c.createCredentials(a, 16)
	settle(t, a, b)
	known := []string{"spiffe://example.org/known"}
	for range 2 {
		c.minute([]*catalogReplica{a, b}, creds, known)
	}
	// Only a serves the newcomer; a flushes within an interval of the
	// token, b (holding about half the shards) within an interval of a.
	c.serve(a, creds, []string{"spiffe://example.org/newcomer"})
	c.clock.add(catalogTestInterval)
	if err := a.counter.flushSome(testCtx(t), false, false); err != nil {
		t.Fatal(err)
	}
	// Minutes pass between two flushes; here milliseconds do: wait for
	// Vault's listing bound (ListRefresh) to let b see a's batches.
	poll.Until(t, 10*time.Second, "b lists a's inbox batches", func() bool {
		for shard := range 64 {
			folder := fmt.Sprintf("%s%02d/", catalog.InboxPrefix, shard)
			mine, _, errA := a.counts.Store.ListPage(testCtx(t), folder, "", 100)
			seen, _, errB := b.counts.Store.ListPage(testCtx(t), folder, "", 100)
			if errA != nil || errB != nil || len(seen) < len(mine) {
				return false
			}
		}
		return true
	})
	if err := b.counter.flushSome(testCtx(t), false, false); err != nil {
		t.Fatal(err)
	}
	if a.broker.Stats().Duties.Owned == 64 || b.broker.Stats().Duties.Owned == 64 {
		t.Fatal("one replica holds every shard: the test needs both to hold some")
	}
	for _, cred := range creds {
		got, _, err := b.broker.Catalog().List(testCtx(t), cred, catalog.Cursor{}, 10)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, cons := range got {
			found = found || cons.Identity == "spiffe://example.org/newcomer" && cons.Count == 1
		}
		if !found {
			t.Errorf("%s: the newcomer is not listed after its replica's flush and the holder's: %v", cred, got)
		}
	}
}
