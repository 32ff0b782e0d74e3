package broker

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/vaultstore"
)

// restartWorkers is the concurrency of the seeding and of the raw reads,
// the background loader's own (newLoader).
const restartWorkers = 32

// restartCredentials is how many credentials the restart benchmarks seed:
// 10,000, or ROTAVAULT_BENCH_CREDENTIALS (100000 for the figure:
// about 80 s of seeding on a Vault dev server).
func restartCredentials(b *testing.B) int {
	if s := os.Getenv("ROTAVAULT_BENCH_CREDENTIALS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("ROTAVAULT_BENCH_CREDENTIALS=%q: want a positive number", s)
		}
		return n
	}
	return 10000
}

// BenchmarkVaultRestartServesAtOnce: a replica restarting over n stored
// credentials on a Vault dev server. It reports the time from New's start
// to the first GetAccessToken answered (for the credential the loader
// reaches last), the time until every credential is loaded, the store
// reads that took, and raw Vault reads/s of the same records with the same
// concurrency in the same run; the goal is all loaded within 1.25 × reads
// ÷ raw reads/s (the ratio reported), and the first answer within 5 s.
// s-serial-load-est is what the serial load before New returned took:
// the reads ÷ one reader's raw reads/s on a sample of 2,000 records.
func BenchmarkVaultRestartServesAtOnce(b *testing.B) {
	srv := vaulttest.StartDev(b)
	vs, err := vaultstore.New(context.Background(), vaultstore.Config{Client: srv.Client(b)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = vs.Close() })
	benchRestart(b, vs)
}

// BenchmarkEmbeddedRestartServesAtOnce is BenchmarkVaultRestartServesAtOnce
// on the embedded store.
func BenchmarkEmbeddedRestartServesAtOnce(b *testing.B) {
	benchRestart(b, openBenchBolt(b))
}

func benchRestart(b *testing.B, st store.Store) {
	ctx := context.Background()
	n := restartCredentials(b)
	ids := seedCredentials(b, st, n)
	keys := make([]string, 0, 2*n)
	for _, id := range ids {
		rec, err := st.Get(ctx, family.CredentialKey(id))
		if err != nil {
			b.Fatal(err)
		}
		var cred family.Credential
		if err := decodeRecord(rec.Value, &cred, &cred.Format); err != nil {
			b.Fatal(err)
		}
		keys = append(keys, family.CredentialKey(id), cred.FamilyKey())
	}
	b.ResetTimer()
	var first, all, raw, reads float64
	var stored int64
	var serial float64
	// rawReads reads keys with workers readers and returns reads/s.
	rawReads := func(keys []string, workers int) float64 {
		start := time.Now()
		forEach(b, keys, workers, func(k string) error {
			_, err := st.Get(ctx, k)
			return err
		})
		return float64(len(keys)) / time.Since(start).Seconds()
	}
	for range b.N {
		// The baseline: raw reads of the same records with the same
		// concurrency, before and after the restart so that drift in the
		// machine's load hits both alike; and one reader on a sample, the
		// pace of the serial load this replaces.
		raw += rawReads(keys, restartWorkers) / 2 / float64(b.N)
		serial += rawReads(keys[:min(len(keys), 2000)], 1) / float64(b.N)

		count := &faultStore{Store: st}
		start := time.Now()
		br, err := New(ctx, Config{Store: count, Provider: provider.New(nil), Auditor: &recordingAuditor{}},
			option.WithSchedulerInterval(time.Hour), option.WithIntrospectionInterval(0))
		if err != nil {
			b.Fatal(err)
		}
		// The credential the loader reaches last (the store lists in order).
		if _, err := br.GetAccessToken(ctx, access.Request{CredentialID: ids[len(ids)-1]}); err != nil {
			b.Fatal(err)
		}
		first += time.Since(start).Seconds() / float64(b.N)
		if err := br.loader.Await(ctx); err != nil {
			b.Fatal(err)
		}
		all += time.Since(start).Seconds() / float64(b.N)
		reads += float64(count.reads.Load()) / float64(b.N)
		s := br.Stats().Loading
		if s.Loaded != s.ToLoad || s.ToLoad < int64(n) {
			b.Fatalf("loaded %d of %d, %d seeded", s.Loaded, s.ToLoad, n)
		}
		stored = s.ToLoad // the seeded ones and the broker-made ones they copy
		_ = br.Close()
		raw += rawReads(keys, restartWorkers) / 2 / float64(b.N)
	}
	b.ReportMetric(first, "s-first-answer")
	b.ReportMetric(all, "s-all-loaded")
	b.ReportMetric(reads/float64(stored), "reads/credential")
	b.ReportMetric(raw, "raw-reads/s")
	b.ReportMetric(all/(reads/raw), "all-loaded/(reads÷raw)")
	b.ReportMetric(reads/serial, "s-serial-load-est")
	b.ReportMetric(0, "ns/op")
}

// seedCredentials stores n credentials with active families straight
// through st, the way a replica leaves them: one made through the broker
// (created, family imported at the simulator, refreshed once), its two
// records copied to n keys with the credential id rewritten. The family
// record holds no credential id; its key does.
func seedCredentials(b *testing.B, st store.Store, n int) []string {
	ctx := context.Background()
	br, _, made := benchBrokerOver(b, st)
	if _, err := br.GetAccessToken(ctx, access.Request{CredentialID: made[0]}); err != nil {
		b.Fatal(err)
	}
	_ = br.Close()
	credRec, err := st.Get(ctx, family.CredentialKey(made[0]))
	if err != nil {
		b.Fatal(err)
	}
	var cred family.Credential
	if err := decodeRecord(credRec.Value, &cred, &cred.Format); err != nil {
		b.Fatal(err)
	}
	famRec, err := st.Get(ctx, cred.FamilyKey())
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("seed-%07d", i)
	}
	start := time.Now()
	forEach(b, ids, restartWorkers, func(id string) error {
		c := cred
		c.ID = id
		raw, err := encodeRecord(&c)
		if err != nil {
			return err
		}
		if _, err := st.Put(ctx, family.CredentialKey(id), raw, 0); err != nil {
			return err
		}
		_, err = st.Put(ctx, c.FamilyKey(), famRec.Value, 0)
		return err
	})
	b.Logf("seeded %d credentials (%d records) in %s", n, 2*n, time.Since(start).Round(time.Millisecond))
	return ids
}

// forEach runs op on every item with workers goroutines.
func forEach(b *testing.B, items []string, workers int, op func(string) error) {
	work := make(chan string)
	var wg sync.WaitGroup
	var once sync.Once
	var failed error
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range work {
				if err := op(it); err != nil {
					once.Do(func() { failed = err })
				}
			}
		}()
	}
	for _, it := range items {
		work <- it
	}
	close(work)
	wg.Wait()
	if failed != nil {
		b.Fatal(failed)
	}
}
