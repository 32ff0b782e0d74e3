package broker

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/vaultstore"
)

// benchWorkers matches the 16 client goroutines of the Vault ceiling figure.
const benchWorkers = 16

type vaultBench struct {
	srv   *vaulttest.Server
	vs    *vaultstore.Store
	count *faultStore
	b     *Broker
	ids   []string
}

func setupVaultBench(b *testing.B) *vaultBench {
	srv := vaulttest.StartDev(b)
	vs, err := vaultstore.New(context.Background(), vaultstore.Config{Client: srv.Client(b)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = vs.Close() })
	br, count, ids := benchBrokerOver(b, vs)
	return &vaultBench{srv: srv, vs: vs, count: count, b: br, ids: ids}
}

// benchBrokerOver is a broker over st (counted through a faultStore) with
// benchWorkers Salesforce credentials at the simulator, each with an
// imported family; the benchmarks of every store start from it.
func benchBrokerOver(b *testing.B, st store.Store) (*Broker, *faultStore, []string) {
	return benchBrokerWith(b, st, func(p Provider) Provider { return p })
}

// benchBrokerWith is benchBrokerOver with the provider client wrapped by
// wrap (the imports' proving refreshes included).
func benchBrokerWith(b *testing.B, st store.Store, wrap func(Provider) Provider) (*Broker, *faultStore, []string) {
	ctx := context.Background()
	sim, err := providersim.Start(providersim.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sim.Close() })
	sim.AddClient(providersim.Client{ID: "bench", Secret: "bench-secret"})
	count := &faultStore{Store: st}
	br, err := New(ctx, Config{Store: count, Provider: wrap(provider.New(nil)), Auditor: &recordingAuditor{}}, option.WithSchedulerInterval(time.Hour))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = br.Close() })
	ids := make([]string, benchWorkers)
	for i := range ids {
		ids[i] = fmt.Sprintf("bench-%d", i)
		spec := credspec.Spec{ProviderKind: credspec.ProviderSalesforce, BaseURL: sim.URL(), ClientID: "bench", ClientSecret: "bench-secret", Scopes: []string{"api", "refresh_token"}}
		if _, err := br.Credentials().Create(ctx, ids[i], spec); err != nil {
			b.Fatal(err)
		}
		rt, err := sim.IssueRefreshToken("bench", nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := br.ImportRefreshToken(ctx, ids[i], rt); err != nil {
			b.Fatal(err)
		}
	}
	return br, count, ids
}

// parallel runs n operations split over benchWorkers goroutines (worker w
// works on credential w) and returns operations per second.
func parallel(b *testing.B, n int, op func(worker int) error) float64 {
	var wg sync.WaitGroup
	per := max(n/benchWorkers, 1)
	start := time.Now()
	for w := range benchWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range per {
				if err := op(w); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return float64(per*benchWorkers) / time.Since(start).Seconds()
}

// BenchmarkVaultRotationsVsRawWrites compares full rotations (claim, provider
// call against the simulator, result) with raw KV v2 check-and-set writes,
// the ceiling, in the same run against the same Vault.
func BenchmarkVaultRotationsVsRawWrites(b *testing.B) {
	vb := setupVaultBench(b)
	ctx := context.Background()
	always := func(*view) bool { return true }
	rotate := func(w int) error {
		e, err := vb.b.entry(ctx, vb.ids[w])
		if err != nil {
			return err
		}
		_, err = vb.b.refresh(ctx, e, nil, always)
		return err
	}
	// The raw writes carry values as large as the records a rotation
	// writes, so both phases ask the same of Vault per write.
	parallel(b, 200, rotate) // warm up, and measure the record size
	value := make([]byte, vb.count.bytes.Load()/vb.count.writes.Load())
	for i := range value {
		value[i] = 'x'
	}
	versions := make([]uint64, benchWorkers)
	rawOp := func(w int) error {
		v, err := vb.vs.Put(ctx, fmt.Sprintf("bench/raw-%d", w), value, versions[w])
		versions[w] = v
		return err
	}
	parallel(b, 200, rawOp) // warm up
	b.ResetTimer()
	// Alternate the two, three rounds each, so drift hits both alike.
	const rounds = 3
	var raw, rot float64
	var reads, writes int64
	// Vault's own CPU time in each phase: on a small machine the broker and
	// the simulated provider take cores Vault has to itself in the raw
	// phase, and this tells that apart from Vault doing more work per write.
	var rawCPU, rotCPU time.Duration
	vaultCPU := func() time.Duration {
		d, err := vb.srv.CPUTime()
		if err != nil {
			b.Fatal(err)
		}
		return d
	}
	for range rounds {
		c0 := vaultCPU()
		raw += parallel(b, b.N, rawOp) / rounds
		c1 := vaultCPU()
		r0, w0 := vb.count.reads.Load(), vb.count.writes.Load()
		rot += parallel(b, b.N, rotate) / rounds
		reads += vb.count.reads.Load() - r0
		writes += vb.count.writes.Load() - w0
		rawCPU += c1 - c0
		rotCPU += vaultCPU() - c1
	}
	b.StopTimer()
	rotations := float64(rounds * max(b.N/benchWorkers, 1) * benchWorkers)
	writesPer := float64(writes) / rotations
	readsPer := float64(reads) / rotations
	b.ReportMetric(raw, "raw-cas-writes/s")
	b.ReportMetric(rot, "rotations/s")
	b.ReportMetric(writesPer, "writes/rotation")
	b.ReportMetric(readsPer, "reads/rotation")
	b.ReportMetric(float64(len(value)), "bytes/write")
	b.ReportMetric(rot/(raw/writesPer), "rotations/ceiling")
	rawWrites := float64(rounds * max(b.N/benchWorkers, 1) * benchWorkers)
	rawPerCPU := rawWrites / rawCPU.Seconds()
	rotWritesPerCPU := float64(writes) / rotCPU.Seconds()
	b.ReportMetric(1e6/rawPerCPU, "vault-cpu-µs/raw-write")
	b.ReportMetric(1e6/rotWritesPerCPU, "vault-cpu-µs/rotation-write")
	// The same ratio per second of Vault CPU instead of per wall second.
	b.ReportMetric(rotWritesPerCPU/rawPerCPU, "rotations/ceiling-per-vault-cpu")
}

// BenchmarkVaultCachedVsReadEveryCall compares the cached GetAccessToken path
// with a variant that reads the family from Vault on every call.
func BenchmarkVaultCachedVsReadEveryCall(b *testing.B) {
	vb := setupVaultBench(b)
	ctx := context.Background()
	cached := func(w int) error {
		_, err := vb.b.GetAccessToken(ctx, access.Request{CredentialID: vb.ids[w]})
		return err
	}
	readEvery := func(w int) error {
		v, err := vb.b.readView(ctx, vb.ids[w])
		if err == nil {
			_ = vb.b.timing(v).Token(vb.b.opts.Now())
		}
		return err
	}
	parallel(b, 200, readEvery)
	b.ResetTimer()
	reading := parallel(b, b.N, readEvery)
	caching := parallel(b, b.N, cached)
	b.StopTimer()
	b.ReportMetric(reading, "read-every-call/s")
	b.ReportMetric(caching, "cached/s")
	b.ReportMetric(caching/reading, "cached/read-every-call")
}
