package tracing_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/rotavault/rotavault/internal/otlptest"
	"github.com/rotavault/rotavault/store/memstore"
	"github.com/rotavault/rotavault/tracing"
)

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// With no OTEL_* variable set, tracing is off: no provider, no exporter,
// and every hook hands back what it was given, so the node runs exactly as
// without tracing. Variables that only describe spans (the service name,
// the sampler) do not turn it on; OTEL_SDK_DISABLED and "none" turn it off.
func TestOffUnlessTheEnvironmentAsksForIt(t *testing.T) {
	for name, env := range map[string]map[string]string{
		"nothing set":                  {},
		"service name only":            {"OTEL_SERVICE_NAME": "rv", "OTEL_TRACES_SAMPLER": "always_on"},
		"sdk disabled":                 {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
		"exporter none with endpoint":  {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
		"other programs' variables":    {"ROTAVAULT_SERVER_DATA_DIR": "/x"},
		"sdk disabled, any spelling":   {"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "otlp"},
		"exporter none, spaced":        {"OTEL_TRACES_EXPORTER": " none "},
		"traces endpoint, but disable": {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:1", "OTEL_SDK_DISABLED": "true"},
	} {
		t.Run(name, func(t *testing.T) {
			tr, err := tracing.FromEnv(context.Background(), envOf(env))
			if err != nil {
				t.Fatal(err)
			}
			if tr.Enabled() {
				t.Fatal("tracing is on")
			}
			st := memstore.New()
			if tr.Store(st) != st || tr.Transport(http.DefaultTransport) != http.DefaultTransport || tr.GRPCServerOptions() != nil {
				t.Error("a hook wrapped its argument while tracing is off")
			}
			log := slog.New(slog.DiscardHandler)
			if tr.Logger(log) != log {
				t.Error("the logger was wrapped while tracing is off")
			}
			_, span := tr.TracerProvider().Tracer("t").Start(context.Background(), "s")
			if span.IsRecording() || span.SpanContext().IsValid() {
				t.Error("the provider records spans while tracing is off")
			}
			if err := tr.Shutdown(context.Background()); err != nil {
				t.Error(err)
			}
		})
	}
}

// An exporter or protocol this build lacks is refused at start, naming the
// variable, instead of starting a server that silently traces nothing.
func TestUnsupportedSettingsAreRefused(t *testing.T) {
	for _, env := range []map[string]string{
		{"OTEL_TRACES_EXPORTER": "console"},
		{"OTEL_TRACES_EXPORTER": "zipkin"},
		{"OTEL_TRACES_EXPORTER": "otlp,console"},
		{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
		{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "thrift"},
	} {
		_, err := tracing.FromEnv(context.Background(), envOf(env))
		if !errors.Is(err, tracing.ErrUnsupported) || !strings.Contains(err.Error(), "OTEL_") {
			t.Errorf("%v: %v, want ErrUnsupported naming the variable", env, err)
		}
	}
}

// The OTLP exporters, as OTEL_* variables configure them, deliver spans
// to a real receiver on loopback, over http/protobuf and over grpc, with
// the service name the environment gives.
func TestOTLPExportReachesAReceiver(t *testing.T) {
	for _, protocol := range []string{"http/protobuf", "grpc"} {
		t.Run(protocol, func(t *testing.T) {
			rec := otlptest.Start(t, protocol)
			endpoint := rec.Endpoint
			// The SDK and the exporters read their own settings from the
			// process environment, as in production.
			env := map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
				"OTEL_SERVICE_NAME": "rotavault-test", "OTEL_TRACES_SAMPLER": "always_on",
			}
			for k, v := range env {
				t.Setenv(k, v)
			}
			ctx := context.Background()
			tr, err := tracing.FromEnv(ctx, envOf(env))
			if err != nil {
				t.Fatal(err)
			}
			if !tr.Enabled() {
				t.Fatal("tracing is off with an OTLP endpoint set")
			}
			_, span := tr.TracerProvider().Tracer("t").Start(ctx, "exported-span")
			span.End()
			if err := tr.Shutdown(ctx); err != nil { // flushes the batch
				t.Fatal(err)
			}
			if spans, services := rec.Spans(), rec.Services(); !slices.Equal(spans, []string{"exported-span"}) || !slices.Equal(services, []string{"rotavault-test"}) {
				t.Fatalf("receiver got spans %q of services %q, want [exported-span] of [rotavault-test]", spans, services)
			}
		})
	}
}

// A line logged within a span carries its trace and span ids; a line
// logged without one carries none.
func TestLogLinesCarryTheTraceID(t *testing.T) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(tracetest.NewInMemoryExporter()))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	var buf bytes.Buffer
	log := tracing.New(tp).Logger(slog.New(slog.NewJSONHandler(&buf, nil))).With("component", "test")
	ctx, span := tp.Tracer("t").Start(context.Background(), "s")
	log.InfoContext(ctx, "inside")
	span.End()
	log.InfoContext(context.Background(), "outside")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	sc := span.SpanContext()
	if !strings.Contains(lines[0], `"trace_id":"`+sc.TraceID().String()+`"`) || !strings.Contains(lines[0], `"span_id":"`+sc.SpanID().String()+`"`) {
		t.Errorf("line within the span: %s", lines[0])
	}
	if strings.Contains(lines[1], "trace_id") {
		t.Errorf("line outside any span: %s", lines[1])
	}
}
