package integration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/store"
)

// writeCountingStore counts the writes (check-and-set puts, conflicting
// or not, and deletes) and the reads (found or missing) a broker makes, by
// kind of key, for stating what one operation costs the store.
type writeCountingStore struct {
	store.Store
	mu     sync.Mutex
	byKind map[string]int64 // "put credentials/", "conflicting put meta/"…
}

func (c *writeCountingStore) tally(op, key string) {
	kind := key
	if i := strings.IndexByte(key, '/'); i >= 0 {
		kind = key[:i+1]
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byKind == nil {
		c.byKind = map[string]int64{}
	}
	c.byKind[op+" "+kind]++
}

func (c *writeCountingStore) Put(ctx context.Context, key string, value []byte, expected uint64) (uint64, error) {
	v, err := c.Store.Put(ctx, key, value, expected)
	if errors.Is(err, store.ErrConflict) {
		c.tally("conflicting put", key)
	} else {
		c.tally("put", key)
	}
	return v, err
}

func (c *writeCountingStore) Get(ctx context.Context, key string) (store.Record, error) {
	rec, err := c.Store.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		c.tally("missing get", key)
	} else {
		c.tally("get", key)
	}
	return rec, err
}

// count is the number of writes (or reads) so far, of every kind.
func (c *writeCountingStore) count(writes bool) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for k, v := range c.byKind {
		if strings.Contains(k, "get ") != writes {
			n += v
		}
	}
	return n
}

func (c *writeCountingStore) Delete(ctx context.Context, key string) error {
	c.tally("delete", key)
	return c.Store.Delete(ctx, key)
}

func (c *writeCountingStore) writes() int64 { return c.count(true) }
func (c *writeCountingStore) reads() int64  { return c.count(false) }

// BenchmarkOnboarding measures onboarding through the public API as a
// platform team does it for each new integration: CreateCredential, then
// Reauthenticate importing a refresh token (which proves it with one refresh
// at the simulator), from benchClients concurrent callers. Beside it, in the
// same run against the same store and with the same concurrency, by turns
// (three rounds each), raw check-and-set writes of a record-sized value:
// the ceiling for onboarding is raw writes/s ÷ writes per onboarding.
// Reported: onboardings/s, store writes and reads per onboarding (and on
// Vault the KV requests Vault got), the raw write rate and
// onboardings/ceiling.
//
//	go test ./integration -run XXX -bench Onboarding -benchtime 2000x -count 3
func BenchmarkOnboarding(b *testing.B) {
	b.Run("embedded", func(b *testing.B) { benchmarkOnboarding(b, envOptions{}) })
	b.Run("vault", func(b *testing.B) { benchmarkOnboarding(b, envOptions{vault: vaulttest.StartDev(b)}) })
}

func benchmarkOnboarding(b *testing.B, opts envOptions) {
	var counted *writeCountingStore
	opts.wrapStore = func(s store.Store) store.Store {
		counted = &writeCountingStore{Store: s}
		return counted
	}
	var requests *vaulttest.Requests
	if opts.vault != nil {
		opts.vaultRequests = &requests
	}
	e := newEnv(b, opts)
	ctx := context.Background()
	spec := e.salesforceSpec()
	scopes := []string{"api", "refresh_token"}

	// The refresh tokens a user would bring, issued before timing: the
	// simulator's own cost is not Rotavault's.
	n := callsOf(b.N)
	tokens := make([]string, n)
	for i := range tokens {
		rt, err := e.sim.IssueRefreshToken(simClientID, scopes)
		if err != nil {
			b.Fatal(err)
		}
		tokens[i] = rt
	}
	var next atomic.Int64
	onboard := func() error {
		i := next.Add(1) - 1
		id := fmt.Sprintf("org-%07d", i)
		if _, err := e.admin.CreateCredential(ctx, &rotavaultv1.CreateCredentialRequest{CredentialId: id, Spec: spec}); err != nil {
			return fmt.Errorf("create %s: %w", id, err)
		}
		_, err := e.vault.Reauthenticate(ctx, &rotavaultv1.ReauthenticateRequest{
			CredentialId: id,
			Flow:         &rotavaultv1.ReauthenticateRequest_RefreshTokenImport{RefreshTokenImport: &rotavaultv1.RefreshTokenImport{RefreshToken: tokens[i]}},
		})
		if err != nil {
			return fmt.Errorf("import into %s: %w", id, err)
		}
		return nil
	}

	// Raw writes: one key per caller, each write a check-and-set on the
	// version the caller last wrote, values as large as a family record.
	value := make([]byte, 2048)
	versions := make([]atomic.Uint64, benchClients)
	// One goroutine per key keeps the raw writes free of conflicts.
	rawRun := func(calls int) time.Duration {
		return runPerWorker(b, calls, func(w int) error {
			v, err := e.store.Put(ctx, fmt.Sprintf("bench/raw-%d", w), value, versions[w].Load())
			if err != nil {
				return err
			}
			versions[w].Store(v)
			return nil
		})
	}
	rawRun(callsOf(200)) // warm up the store and the connection pool
	// Onboardings and raw writes take turns, three rounds each, so that
	// the disk's fsync speed, which drifts from one minute to the next,
	// weighs on both alike: timed once after every onboarding, the raw
	// writes took a twentieth of the time and the ratio drifted with them.
	rounds := 3
	if n < rounds*benchClients {
		rounds = 1
	}
	per := n / rounds / benchClients * benchClients
	var onboardDur, rawDur time.Duration
	before, readsBefore := counted.writes(), counted.reads()
	// Vault's request counter sees the raw writes too (the same client):
	// only what it counts while onboardings run is theirs.
	var vaultWrites, vaultReads int64
	b.ResetTimer()
	b.StopTimer()
	for r := range rounds {
		calls := per
		if r == rounds-1 {
			calls = n - per*(rounds-1)
		}
		var w0, r0 int64
		if requests != nil {
			w0, r0 = requests.KVWrites(), requests.KVReads()
		}
		b.StartTimer()
		onboardDur += run(b, calls, onboard)
		b.StopTimer()
		if requests != nil {
			vaultWrites += requests.KVWrites() - w0
			vaultReads += requests.KVReads() - r0
		}
		rawDur += rawRun(calls)
	}
	writes := float64(counted.writes()-before) / float64(n)
	reads := float64(counted.reads()-readsBefore) / float64(n)
	if requests != nil {
		// What Vault is sent, which the store's operations understate when
		// a creation also writes the record's metadata.
		b.ReportMetric(float64(vaultWrites)/float64(n), "vault-kv-writes/onboarding")
		b.ReportMetric(float64(vaultReads)/float64(n), "vault-kv-reads/onboarding")
		b.Logf("Vault requests, by kind (the raw writes' included): %v", requests.ByKind())
	}
	counted.mu.Lock()
	b.Logf("store writes and reads during %d onboardings (and the setup before), by kind: %v", n, counted.byKind)
	counted.mu.Unlock()

	onboardRate := float64(n) / onboardDur.Seconds()
	rawRate := float64(n) / rawDur.Seconds()
	b.ReportMetric(onboardRate, "onboardings/s")
	b.ReportMetric(writes, "writes/onboarding")
	b.ReportMetric(reads, "reads/onboarding")
	b.ReportMetric(rawRate, "raw-cas-writes/s")
	b.ReportMetric(onboardRate/(rawRate/writes), "onboardings/ceiling")

	// Every onboarded credential serves a token without another refresh.
	refreshes := e.sim.Stats().RefreshRequests
	for _, id := range []string{"org-0000000", fmt.Sprintf("org-%07d", n-1)} {
		e.token(id)
	}
	if got := e.sim.Stats().RefreshRequests; got != refreshes {
		b.Fatalf("an onboarded credential refreshed again on its first call: %d refreshes, want %d", got, refreshes)
	}
}

// runPerWorker is run with each goroutine passing its own number to call.
func runPerWorker(b *testing.B, n int, call func(worker int) error) time.Duration {
	var wg sync.WaitGroup
	per := (n + benchClients - 1) / benchClients
	start := time.Now()
	for w := range benchClients {
		wg.Go(func() {
			for range per {
				if err := call(w); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start)
}
