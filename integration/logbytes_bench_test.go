package integration

import (
	"context"
	"log/slog"
	"testing"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/server"
)

// logBytesCalls is how many cached calls one iteration makes.
const logBytesCalls = 100_000

// BenchmarkLogBytesPer100kCachedCalls measures what the hot path writes to
// the log: the bytes 100,000 cached GetAccessToken calls (32 concurrent
// callers) add to a real server's log at rotavault serve's default level
// (info, JSON), the issuance summary's flush included. Successful routine
// reads are logged at debug (server/accesslog.go); the goal is under
// 10 KiB per 100,000 calls. For scale it also reports the same calls'
// log bytes at debug, the level that writes an access line per call.
func BenchmarkLogBytesPer100kCachedCalls(b *testing.B) {
	measure := func(level slog.Level) float64 {
		e := newEnv(b, envOptions{rateLimit: server.RateLimit{Rate: 1e9, Burst: 1e9}, logLevel: level})
		e.installSalesforce("acme")
		e.token("acme")
		ctx := context.Background()
		cached := func() error {
			_, err := e.vault.GetAccessToken(ctx, &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
			return err
		}
		var added int
		for range b.N {
			before := len(e.logs.String())
			run(b, logBytesCalls, cached)
			if err := e.srv.FlushIssuance(ctx); err != nil {
				b.Fatal(err)
			}
			added += len(e.logs.String()) - before
			if text := e.logs.String()[before:]; level == slog.LevelInfo && text != "" {
				b.Logf("lines at info: %.2000s", text) // what the hot path still logs
			}
		}
		if refreshes := e.sim.Stats().RefreshRequests; refreshes != 1 {
			b.Fatalf("the calls were not all cached: %d refreshes", refreshes)
		}
		return float64(added) / float64(b.N)
	}
	info := measure(slog.LevelInfo)
	debug := measure(slog.LevelDebug)
	b.ReportMetric(info, "log-bytes/100k-calls")
	b.ReportMetric(debug, "debug-log-bytes/100k-calls")
	b.ReportMetric(0, "ns/op")
}
