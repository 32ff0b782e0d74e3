package broker

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/boltstore"
	"github.com/rotavault/rotavault/provider"
)

// BenchmarkEmbeddedRotationsVsRawWrites is BenchmarkVaultRotationsVsRawWrites
// on the embedded store (bbolt, on the test's temporary directory): full
// rotations (claim, provider call to the simulator, result) against raw
// check-and-set Puts of the same size on the same store, benchWorkers
// concurrent writers in both phases, so both get the same group commit.
// Each commit is an fsync; the ceiling is raw writes/s ÷ writes per
// rotation.
//
// Two cases tell the broker's share from the provider's: "simulator" calls
// the Salesforce simulator over loopback HTTP, in this process, on the
// same cores; "instant-provider" answers each refresh in process at once,
// so what remains is the broker and the store alone.
func BenchmarkEmbeddedRotationsVsRawWrites(b *testing.B) {
	b.Run("simulator", func(b *testing.B) {
		embeddedRotationsVsRawWrites(b, func(p Provider) Provider { return p })
	})
	b.Run("instant-provider", func(b *testing.B) {
		embeddedRotationsVsRawWrites(b, func(p Provider) Provider { return &instantRotations{Provider: p} })
	})
}

func embeddedRotationsVsRawWrites(b *testing.B, wrap func(Provider) Provider) {
	ctx := context.Background()
	bs := openBenchBolt(b)
	br, count, ids := benchBrokerWith(b, bs, wrap)
	always := func(*view) bool { return true }
	rotate := func(w int) error {
		e, err := br.entry(ctx, ids[w])
		if err != nil {
			return err
		}
		_, err = br.refresh(ctx, e, nil, always)
		return err
	}
	parallel(b, 200, rotate) // warm up, and measure the record size
	value := make([]byte, count.bytes.Load()/count.writes.Load())
	versions := make([]uint64, benchWorkers)
	rawOp := func(w int) error {
		v, err := bs.Put(ctx, fmt.Sprintf("bench/raw-%d", w), value, versions[w])
		versions[w] = v
		return err
	}
	parallel(b, 200, rawOp) // warm up
	b.ResetTimer()
	// Alternate the two, three rounds each, so drift hits both alike.
	const rounds = 3
	var raw, rot float64
	var writes int64
	for range rounds {
		raw += parallel(b, b.N, rawOp) / rounds
		w0 := count.writes.Load()
		rot += parallel(b, b.N, rotate) / rounds
		writes += count.writes.Load() - w0
	}
	b.StopTimer()
	writesPer := float64(writes) / float64(rounds*max(b.N/benchWorkers, 1)*benchWorkers)
	b.ReportMetric(raw, "raw-cas-writes/s")
	b.ReportMetric(rot, "rotations/s")
	b.ReportMetric(writesPer, "writes/rotation")
	b.ReportMetric(float64(len(value)), "bytes/write")
	b.ReportMetric(rot/(raw/writesPer), "rotations/ceiling")
}

// openBenchBolt opens an embedded store in the benchmark's temporary
// directory, closed when it ends.
func openBenchBolt(b *testing.B) *boltstore.Store {
	dir := b.TempDir()
	key, err := boltstore.GenerateKeyFile(filepath.Join(dir, "store.key"))
	if err != nil {
		b.Fatal(err)
	}
	bs, err := boltstore.Open(filepath.Join(dir, "rotavault.db"), key, boltstore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = bs.Close() })
	return bs
}

// instantRotations answers every refresh at once with a rotation, tokens
// as long as the simulator's.
type instantRotations struct {
	Provider
	serial atomic.Uint64
}

func (p *instantRotations) Refresh(context.Context, provider.Endpoint, provider.ClientCredentials, string) (*provider.Token, error) {
	n := strconv.FormatUint(p.serial.Add(1), 36)
	return &provider.Token{
		AccessToken:  strings.Repeat("a", 112-len(n)) + n,
		RefreshToken: strings.Repeat("r", 87-len(n)) + n,
		TokenType:    "Bearer",
		ExpiresIn:    time.Hour,
	}, nil
}
