package integration

import (
	"context"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/server"
	"github.com/rotavault/rotavault/tracing"
)

// discardExporter takes every span and keeps none: the cost of exporting
// without a collector's.
type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }

// BenchmarkCachedGetAccessTokenTracing measures cached GetAccessToken
// through the real gRPC server with tracing off (no OTEL_* variable:
// nothing wrapped), with the hooks on a no-op provider, and on (every call
// sampled, spans batched to an exporter that discards them), in one run,
// in alternating slices so drift hits all three alike. Reported: each one's
// throughput and the ratios noop/off and on/off.
func BenchmarkCachedGetAccessTokenTracing(b *testing.B) {
	sdk := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithBatcher(discardExporter{}))
	b.Cleanup(func() { _ = sdk.Shutdown(context.Background()) })
	variants := []struct {
		name    string
		tracing *tracing.Tracing
	}{
		{"off", nil},
		{"noop", tracing.New(tracenoop.NewTracerProvider())},
		{"on", tracing.New(sdk)},
	}
	ctx := context.Background()
	calls := make([]func() error, len(variants))
	for i, v := range variants {
		e := newEnv(b, envOptions{rateLimit: server.RateLimit{Rate: 1e9, Burst: 1e9}, tracing: v.tracing})
		e.installSalesforce("acme")
		e.token("acme")
		calls[i] = func() error {
			_, err := e.vault.GetAccessToken(ctx, &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
			return err
		}
		run(b, 2000, calls[i]) // warm up
	}
	// Short slices, many rounds, the order turning each round: on a shared
	// machine the load changes within seconds, and each variant must see
	// the same mix of it.
	const slices = 30
	per := max(b.N/slices, benchClients)
	b.ResetTimer()
	durs := make([]time.Duration, len(variants))
	for round := range 3 * slices {
		for k := range variants {
			i := (round + k) % len(variants)
			durs[i] += run(b, per, calls[i])
		}
	}
	b.StopTimer()
	n := float64(3 * slices * callsOf(per))
	rate := func(i int) float64 { return n / durs[i].Seconds() }
	for i, v := range variants {
		b.ReportMetric(rate(i), v.name+"-calls/s")
	}
	b.ReportMetric(rate(1)/rate(0), "noop/off")
	b.ReportMetric(rate(2)/rate(0), "on/off")
}
