package integration

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/server"
)

// benchClients is the number of concurrent callers in throughput benchmarks.
const benchClients = 32

// BenchmarkCachedGetAccessTokenVsNoop measures cached GetAccessToken against
// a no-op unary RPC (the health check) served by the same server, interceptor
// chain and connection, in one run. Reported: each one's throughput and the
// ratio cached/no-op (target ≥ 0.8).
//
// One caller sends far more than the default per-caller rate limit here, so
// the limit is raised out of the way; the limiter's check still runs on
// every GetAccessToken (health checks skip it, and authentication).
func BenchmarkCachedGetAccessTokenVsNoop(b *testing.B) {
	cachedVsNoop(b, envOptions{rateLimit: server.RateLimit{Rate: 1e9, Burst: 1e9}})
}

// BenchmarkCachedGetAccessTokenWithServeMetricsVsNoop is the same with the
// per-RPC gRPC metrics serve always registers (counters and a latency
// histogram for every call, health checks included), which the benchmark
// above leaves off.
func BenchmarkCachedGetAccessTokenWithServeMetricsVsNoop(b *testing.B) {
	cachedVsNoop(b, envOptions{rateLimit: server.RateLimit{Rate: 1e9, Burst: 1e9},
		serverConfig: func(cfg *server.Config) { cfg.Registerer = prometheus.NewRegistry() }})
}

func cachedVsNoop(b *testing.B, opts envOptions) {
	e := newEnv(b, opts)
	e.installSalesforce("acme")
	e.token("acme")
	health := healthpb.NewHealthClient(e.conn)
	ctx := context.Background()
	noop := func() error {
		_, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	cached := func() error {
		_, err := e.vault.GetAccessToken(ctx, &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
		return err
	}
	// Warm up both paths, then alternate so drift hits both alike.
	run(b, 2000, noop)
	run(b, 2000, cached)
	b.ResetTimer()
	var noopDur, cachedDur time.Duration
	for round := 0; round < 3; round++ {
		noopDur += run(b, b.N, noop)
		cachedDur += run(b, b.N, cached)
	}
	b.StopTimer()
	calls := float64(3 * b.N)
	noopRate, cachedRate := calls/noopDur.Seconds(), calls/cachedDur.Seconds()
	b.ReportMetric(noopRate, "noop-calls/s")
	b.ReportMetric(cachedRate, "cached-calls/s")
	b.ReportMetric(cachedRate/noopRate, "cached/noop")
	if refreshes := e.sim.Stats().RefreshRequests; refreshes != 1 {
		b.Fatalf("the cached path refreshed: %d refreshes", refreshes)
	}
	// The consumer catalog was on and counted every call (in memory; this
	// flush is its first store write).
	if err := e.srv.FlushIssuance(ctx); err != nil {
		b.Fatal(err)
	}
	resp, err := e.admin.ListConsumers(ctx, &rotavaultv1.ListConsumersRequest{CredentialId: "acme"})
	if err != nil {
		b.Fatal(err)
	}
	var counted uint64
	for _, c := range resp.GetConsumers() {
		counted += c.GetTokenCount()
	}
	if want := uint64(1 + callsOf(2000) + 3*callsOf(b.N)); counted != want {
		b.Fatalf("the consumer catalog counted %d tokens, want %d", counted, want)
	}
}

// callsOf is how many calls run(b, n, …) makes.
func callsOf(n int) int { return benchClients * ((n + benchClients - 1) / benchClients) }

// run makes n calls from benchClients goroutines and returns the wall time.
func run(b *testing.B, n int, call func() error) time.Duration {
	return runPerWorker(b, n, func(int) error { return call() })
}
