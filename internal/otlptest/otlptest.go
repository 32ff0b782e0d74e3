// Package otlptest is an OTLP trace receiver on loopback for tests: what
// an OpenTelemetry collector is to a traced Rotavault, reduced to keeping
// the names of the spans and services it was sent. It speaks OTLP over
// HTTP (protobuf bodies on /v1/traces) and over gRPC.
package otlptest

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Receiver keeps what it is sent. It is safe for concurrent use.
type Receiver struct {
	collectortrace.UnimplementedTraceServiceServer
	// Endpoint is what OTEL_EXPORTER_OTLP_ENDPOINT should say.
	Endpoint string

	mu       sync.Mutex
	spans    []string
	services []string
}

// Start starts a receiver for protocol ("http/protobuf" or "grpc"), stopped
// at the end of the test.
func Start(t testing.TB, protocol string) *Receiver {
	t.Helper()
	r := &Receiver{}
	if protocol == "grpc" {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		gs := grpc.NewServer()
		collectortrace.RegisterTraceServiceServer(gs, r)
		go func() { _ = gs.Serve(lis) }()
		t.Cleanup(gs.Stop)
		r.Endpoint = "http://" + lis.Addr().String()
		return r
	}
	hs := httptest.NewServer(r)
	t.Cleanup(hs.Close)
	r.Endpoint = hs.URL
	return r
}

// Spans returns the names of the spans received so far.
func (r *Receiver) Spans() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.spans)
}

// Services returns the service.name of each batch received so far.
func (r *Receiver) Services() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.services)
}

// Export is the gRPC TraceService's method.
func (r *Receiver) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, a := range rs.GetResource().GetAttributes() {
			if a.GetKey() == "service.name" {
				r.services = append(r.services, a.GetValue().GetStringValue())
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				r.spans = append(r.spans, s.GetName())
			}
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

// ServeHTTP is OTLP/HTTP with protobuf bodies.
func (r *Receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(io.LimitReader(req.Body, 4<<20))
	var msg collectortrace.ExportTraceServiceRequest
	if err != nil || req.URL.Path != "/v1/traces" || req.Header.Get("Content-Type") != "application/x-protobuf" || proto.Unmarshal(body, &msg) != nil {
		http.Error(w, "bad export", http.StatusBadRequest)
		return
	}
	resp, _ := r.Export(req.Context(), &msg)
	out, _ := proto.Marshal(resp)
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}
