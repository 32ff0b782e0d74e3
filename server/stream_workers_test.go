package server

import (
	"context"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Calls run on goroutines kept from earlier calls, whose stacks have grown
// already, not on a new goroutine each: one caller's sequential calls
// reuse the same streamWorkers of them.
func TestCallsRunOnGoroutinesKeptFromEarlierCalls(t *testing.T) {
	var handlers []uint64
	record := grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		handlers = append(handlers, callingGoroutine()) // calls are sequential
		return h(ctx, req)
	})
	health := healthpb.NewHealthClient(serveLoopback(t, Config{ExtraOptions: []grpc.ServerOption{record}}))
	const calls = 4 * streamWorkers
	for range calls {
		if _, err := health.Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	distinct := map[uint64]bool{}
	for _, id := range handlers {
		distinct[id] = true
	}
	if len(distinct) > streamWorkers {
		t.Fatalf("%d calls ran on %d goroutines: a new goroutine per call", calls, len(distinct))
	}
}

// callingGoroutine is the calling goroutine's number, from its stack
// trace's first line ("goroutine 42 [running]:").
func callingGoroutine() uint64 {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	id, _ := strconv.ParseUint(strings.Fields(string(buf))[1], 10, 64)
	return id
}
