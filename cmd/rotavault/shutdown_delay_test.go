package main

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// A stopping replica first tells load balancers (health Check and Watch,
// /readyz) that it is going away, and serves every call for the shutdown
// delay while they take it out; only then are watch streams ended and new
// calls refused.
func TestShutdownReportsNotServingAndServesThroughItsDelay(t *testing.T) {
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	readyz := "http://" + httpLis.Addr().String() + "/readyz"
	dir := t.TempDir()
	keyFile, _ := newKeyFile(t, dir, "store.key")
	n := startNodeWith(t, dir, keyFile, nil, func(cfg *serverConfig) {
		cfg.HTTPListener = httpLis
		// Long enough for the checks below on a loaded machine; the test
		// waits on conditions, not on the delay.
		cfg.ShutdownDelay = 3 * time.Second
	})
	conn, err := grpc.NewClient(n.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), awaitDeadline)
	defer cancel()
	health := healthpb.NewHealthClient(conn)
	watch, err := health.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := watch.Recv(); err != nil || st.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health watch before the shutdown: %v, %v; want SERVING", st, err)
	}
	get(t, readyz, http.StatusOK)

	n.cancel() // what SIGTERM does
	st, err := watch.Recv()
	if err != nil || st.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health watch after the shutdown began: %v, %v; want NOT_SERVING before the stream ends", st, err)
	}
	if body := get(t, readyz, http.StatusServiceUnavailable); !strings.Contains(body, "shutting down") {
		t.Errorf("/readyz during the shutdown delay: %q, want it to say the replica is shutting down", body)
	}
	// Still serving: a load balancer that has not yet probed again sends
	// calls here, and they must not fail.
	if res, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || res.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health check during the shutdown delay: %v, %v; want an answer, NOT_SERVING", res, err)
	}
	if _, err := rotavaultv1.NewCredentialAdminServiceClient(conn).ListCredentials(ctx, &rotavaultv1.ListCredentialsRequest{}); err != nil {
		t.Errorf("a call during the shutdown delay failed: %v", err)
	}

	// After the delay the watch ends (resume elsewhere) and the server stops.
	for {
		if _, err = watch.Recv(); err != nil {
			break
		}
	}
	if status.Code(err) != codes.Unavailable {
		t.Errorf("health watch ended with %v, want UNAVAILABLE", err)
	}
	select {
	case err := <-n.done:
		if err != nil {
			t.Errorf("server stopped with %v", err)
		}
		n.done = nil
	case <-time.After(awaitDeadline):
		t.Fatal("server did not stop after its shutdown delay")
	}
	if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(false)); err == nil {
		t.Error("the stopped server still answers")
	}
}
