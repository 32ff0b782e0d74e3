package broker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/access"
)

// BenchmarkCachedGetAccessToken measures the cached GetAccessToken path (an
// entry lookup, a view load, the freshness checks, markUsed, the answer)
// on 1,000 credentials whose tokens are in use, against copying the
// cached answer alone (family.Timing.Token) in the same run, in alternating
// batches so that load from elsewhere falls on both alike. markUsed wakes
// the scheduler on a first use: the ratio says whether that costs the
// hot path anything (compare it with the same benchmark before).
func BenchmarkCachedGetAccessToken(b *testing.B) {
	const n = 1000
	ctx := context.Background()
	br := newIdleBroker(b, n)
	reqs := make([]access.Request, n)
	views := make([]*view, n)
	for i := range n {
		reqs[i] = access.Request{CredentialID: fmt.Sprintf("cred-%d", i)}
		e, err := br.entry(ctx, reqs[i].CredentialID)
		if err != nil {
			b.Fatal(err)
		}
		views[i] = e.view.Load()
	}
	hits := br.metrics.CacheHits.Load()
	var cached, copied time.Duration
	sink := 0
	const batch = 10_000
	b.ResetTimer()
	for done := 0; done < b.N; done += batch {
		k := min(batch, b.N-done)
		start := time.Now()
		for i := range k {
			tok, err := br.GetAccessToken(ctx, reqs[i%n])
			if err != nil {
				b.Fatal(err)
			}
			sink += len(tok.Token)
		}
		cached += time.Since(start)
		start = time.Now()
		for i := range k {
			sink += len(br.timing(views[i%n]).Token(br.opts.Now()).Token)
		}
		copied += time.Since(start)
	}
	b.StopTimer()
	if got := br.metrics.CacheHits.Load() - hits; got != int64(b.N) || sink == 0 {
		b.Fatalf("%d of %d calls served from the cache", got, b.N)
	}
	b.ReportMetric(float64(cached.Nanoseconds())/float64(b.N), "ns/cached-call")
	b.ReportMetric(float64(copied.Nanoseconds())/float64(b.N), "ns/answer-copy")
	b.ReportMetric(float64(cached)/float64(copied), "cached-call/answer-copy")
}
