package boltstore

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/rotavault/rotavault/store"
)

// benchWriters is the concurrency of the broker's rotation benchmarks.
const benchWriters = 16

// writesPerSecond runs n writes split over benchWriters goroutines.
func writesPerSecond(b *testing.B, n int, write func(w int) error) float64 {
	var wg sync.WaitGroup
	per := max(n/benchWriters, 1)
	start := time.Now()
	for w := range benchWriters {
		wg.Go(func() {
			for range per {
				if err := write(w); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return float64(per*benchWriters) / time.Since(start).Seconds()
}

// BenchmarkPutVsRawBoltCommits compares, in one run and at 16 writers,
// Store.Put (check-and-set, sealed, through the group commit) with raw bbolt
// check-and-set writes of the same size through the same group commit, and
// with raw ones that commit one by one (db.Update, as Put did before).
func BenchmarkPutVsRawBoltCommits(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "bench.db"), testKey(b, 1), Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	const raw = "rawbench"
	if err := s.db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte(raw)); return err }); err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	value := make([]byte, 748) // a rotation's record
	// Each kind of write has its own keys and versions, per writer.
	putVersions := make([]uint64, benchWriters)
	put := func(w int) error {
		v, err := s.Put(ctx, fmt.Sprintf("bench/k%d", w), value, putVersions[w])
		putVersions[w] = v
		return err
	}
	// rawCAS is the same check-and-set on bbolt alone, the version in the
	// value's first 8 bytes, nothing sealed.
	rawCAS := func(prefix string, versions []uint64, w int) func(tx *bolt.Tx) error {
		return func(tx *bolt.Tx) error {
			bk, key := tx.Bucket([]byte(raw)), []byte(fmt.Sprintf("%s%d", prefix, w))
			var current uint64
			if cur := bk.Get(key); cur != nil {
				current = binary.BigEndian.Uint64(cur)
			}
			if current != versions[w] {
				return store.ErrConflict
			}
			next := make([]byte, len(value))
			binary.BigEndian.PutUint64(next, current+1)
			versions[w] = current + 1
			return bk.Put(key, next)
		}
	}
	groupedVersions, singleVersions := make([]uint64, benchWriters), make([]uint64, benchWriters)
	grouped := func(w int) error { return s.commits.write(rawCAS("grouped", groupedVersions, w)) }
	single := func(w int) error { return s.db.Update(rawCAS("single", singleVersions, w)) }
	ops := []func(int) error{put, grouped, single}
	for _, op := range ops {
		writesPerSecond(b, 200, op) // warm up
	}
	b.ResetTimer()
	// Alternated, three rounds, so drift hits all alike.
	const rounds = 3
	rates := make([]float64, len(ops))
	for range rounds {
		for i, op := range ops {
			rates[i] += writesPerSecond(b, b.N, op) / rounds
		}
	}
	b.StopTimer()
	b.ReportMetric(rates[0], "puts/s")
	b.ReportMetric(rates[1], "raw-grouped/s")
	b.ReportMetric(rates[2], "raw-single/s")
	b.ReportMetric(rates[0]/rates[1], "puts/raw-grouped")
	b.ReportMetric(rates[1]/rates[2], "raw-grouped/raw-single")
}
