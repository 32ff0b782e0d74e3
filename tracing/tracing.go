// Package tracing is Rotavault's OpenTelemetry tracing: one TracerProvider,
// configured by the standard OTEL_* environment variables, and the hooks
// that put it on the parts of a node — the gRPC server (otelgrpc), the HTTP
// endpoints and the provider client (otelhttp), the store (a span per call,
// naming the kind of key, never a value) and the logger (trace_id and
// span_id on every line logged within a traced call). The broker's own
// spans (rotavault.claim, rotavault.refresh) take their tracer from the span
// in their context, so the broker needs no option.
//
// Tracing is off unless the environment asks for it (see FromEnv). Off,
// every hook returns its argument unchanged: nothing is wrapped, and the
// broker's spans come from the no-op tracer of a context without a span.
//
// No span attribute, event or status carries a token, a secret, an
// authorization code or a record's value: the hooks record names, kinds,
// sizes and outcomes only (integration's TestTracingSpanTreeOfOneRotation
// checks every spelling of every secret of a rotation against every span).
package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"

	"github.com/rotavault/rotavault/internal/version"
	"github.com/rotavault/rotavault/store"
)

// The variables FromEnv reads, with its getenv, to decide whether, how and
// where to trace. The SDK and the exporters read the others from the
// process environment themselves (OTEL_SERVICE_NAME,
// OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER and _ARG, OTEL_BSP_*,
// OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT, _CERTIFICATE…).
const (
	EnvSDKDisabled    = "OTEL_SDK_DISABLED"
	EnvExporter       = "OTEL_TRACES_EXPORTER"
	EnvEndpoint       = "OTEL_EXPORTER_OTLP_ENDPOINT"
	EnvTracesEndpoint = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	EnvProtocol       = "OTEL_EXPORTER_OTLP_PROTOCOL"
	EnvTracesProtocol = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
)

// ErrUnsupported is returned by FromEnv for an exporter or protocol this
// build does not have.
var ErrUnsupported = errors.New("tracing: unsupported setting")

// instrumentationName names the tracers of Rotavault's own spans.
const instrumentationName = "github.com/rotavault/rotavault"

// Tracing is a node's tracing, on or off. A nil *Tracing is off. It is safe
// for concurrent use.
type Tracing struct {
	tp       trace.TracerProvider
	prop     propagation.TextMapPropagator
	shutdown func(context.Context) error
}

// New returns tracing on with tp, which the caller shuts down (tests and
// benchmarks: an in-memory exporter, or a no-op provider to measure the
// hooks alone).
func New(tp trace.TracerProvider) *Tracing {
	return &Tracing{tp: tp, prop: propagation.TraceContext{}}
}

// FromEnv sets tracing up as the OTEL_* variables (looked up with getenv)
// say:
//
//   - off when none of OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_ENDPOINT and
//     OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (unlike the SDK's default of
//     exporting to localhost: a server that starts sending data somewhere
//     because nobody configured it would surprise its operator), when
//     OTEL_SDK_DISABLED=true, or when OTEL_TRACES_EXPORTER=none;
//   - otherwise spans go to an OTLP exporter over OTEL_EXPORTER_OTLP_PROTOCOL
//     (or its _TRACES_ twin): http/protobuf (the default) or grpc.
//
// Any other exporter (console, zipkin, …) or protocol (http/json) is
// refused with ErrUnsupported, so that a typo does not pass for a working
// setup. Incoming W3C traceparent headers are honoured (tracecontext).
func FromEnv(ctx context.Context, getenv func(string) string) (*Tracing, error) {
	if strings.EqualFold(strings.TrimSpace(getenv(EnvSDKDisabled)), "true") {
		return nil, nil
	}
	on := getenv(EnvEndpoint) != "" || getenv(EnvTracesEndpoint) != ""
	if v := strings.TrimSpace(getenv(EnvExporter)); v != "" {
		on = false
		for _, name := range strings.Split(v, ",") {
			switch strings.TrimSpace(name) {
			case "otlp":
				on = true
			case "none":
			default:
				return nil, fmt.Errorf("%w: %s=%q: this build exports traces with otlp only (or none)", ErrUnsupported, EnvExporter, v)
			}
		}
	}
	if !on {
		return nil, nil
	}
	protocol := cmpOr(getenv(EnvTracesProtocol), getenv(EnvProtocol), "http/protobuf")
	var exp sdktrace.SpanExporter
	var err error
	// The endpoint as getenv says (the exporters would read the process
	// environment); the traces-specific one is used as given, the general
	// one gets the signal's path over HTTP, as the specification says.
	tracesURL, baseURL := strings.TrimSpace(getenv(EnvTracesEndpoint)), strings.TrimSpace(getenv(EnvEndpoint))
	switch protocol {
	case "http/protobuf":
		var opts []otlptracehttp.Option
		if u := cmpOr(tracesURL, joinPath(baseURL, "/v1/traces")); u != "" {
			opts = append(opts, otlptracehttp.WithEndpointURL(u))
		}
		exp, err = otlptracehttp.New(ctx, opts...)
	case "grpc":
		var opts []otlptracegrpc.Option
		if u := cmpOr(tracesURL, baseURL); u != "" {
			opts = append(opts, otlptracegrpc.WithEndpointURL(u))
		}
		exp, err = otlptracegrpc.New(ctx, opts...)
	default:
		return nil, fmt.Errorf("%w: %s=%q: http/protobuf or grpc", ErrUnsupported, EnvProtocol, protocol)
	}
	if err != nil {
		return nil, fmt.Errorf("tracing: OTLP exporter: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "rotavault"), attribute.String("service.version", version.Get().Version)),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES win
		resource.WithTelemetrySDK())
	if err != nil {
		_ = exp.Shutdown(ctx)
		return nil, fmt.Errorf("tracing: resource: %w", err)
	}
	// The sampler is the SDK's default: OTEL_TRACES_SAMPLER, else
	// parentbased_always_on.
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	t := New(tp)
	t.shutdown = tp.Shutdown
	return t, nil
}

func joinPath(base, path string) string {
	if base == "" {
		return ""
	}
	return strings.TrimRight(base, "/") + path
}

func cmpOr(vals ...string) string {
	for _, v := range vals {
		if v = strings.TrimSpace(v); v != "" {
			return v
		}
	}
	return ""
}

// Enabled reports whether spans are being recorded and exported.
func (t *Tracing) Enabled() bool { return t != nil }

// TracerProvider returns the provider (a no-op one when off).
func (t *Tracing) TracerProvider() trace.TracerProvider {
	if t == nil {
		return tracenoop.NewTracerProvider()
	}
	return t.tp
}

// Shutdown exports the spans still buffered and stops the exporter, within
// ctx. It does nothing when off or for a provider given to New.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t == nil || t.shutdown == nil {
		return nil
	}
	return t.shutdown(ctx)
}

// GRPCServerOptions returns the options that give each gRPC call a server
// span (and none when off). The span records the method, the peer and the
// status code; no message content (message events are off).
func (t *Tracing) GRPCServerOptions() []grpc.ServerOption {
	if t == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(t.tp), otelgrpc.WithPropagators(t.prop),
		// gRPC metrics come from Prometheus (server/grpc.go); no second set.
		otelgrpc.WithMeterProvider(metricnoop.NewMeterProvider())))}
}

// HTTPHandler gives each request to h that traced accepts a server span
// named after operation; h itself when off. The span records the method,
// the path and the status, never the query (where the OAuth callback's code
// and state are).
func (t *Tracing) HTTPHandler(h http.Handler, operation string, traced func(*http.Request) bool) http.Handler {
	if t == nil {
		return h
	}
	return otelhttp.NewHandler(h, operation, otelhttp.WithTracerProvider(t.tp), otelhttp.WithPropagators(t.prop),
		otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()), otelhttp.WithFilter(traced))
}

// Transport wraps base (nil: http.DefaultTransport) so that each request
// made within a traced call gets a client span and carries its
// traceparent; base itself when off. Requests outside a traced call
// (background refreshes, introspection) pass through unrecorded instead of
// each starting a trace of its own.
func (t *Tracing) Transport(base http.RoundTripper) http.RoundTripper {
	if t == nil {
		return base
	}
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{base: base, traced: otelhttp.NewTransport(base, otelhttp.WithTracerProvider(t.tp), otelhttp.WithPropagators(t.prop),
		otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()))}
}

type transport struct{ base, traced http.RoundTripper }

func (tr *transport) RoundTrip(r *http.Request) (*http.Response, error) {
	if !trace.SpanFromContext(r.Context()).IsRecording() {
		return tr.base.RoundTrip(r)
	}
	return tr.traced.RoundTrip(r)
}

// Store wraps st so that each call made within a traced call gets a span
// (see TracedStore); st itself when off.
func (t *Tracing) Store(st store.Store) store.Store {
	if t == nil {
		return st
	}
	return &tracedStore{s: st, tracer: t.tp.Tracer(instrumentationName + "/store")}
}

// Logger returns l with trace_id and span_id added to each line logged with
// a context that carries a span (see LogHandler); l itself when off.
func (t *Tracing) Logger(l *slog.Logger) *slog.Logger {
	if t == nil || l == nil {
		return l
	}
	return slog.New(LogHandler(l.Handler()))
}
