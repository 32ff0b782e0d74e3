package client_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/rotavault/rotavault/client"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/server"
)

// A server lets one identity hold a bounded number of watch streams. With
// N clients of one identity watching, client N+1 is refused its watch
// (RESOURCE_EXHAUSTED with RetryInfo), retries no faster than its backoff
// allows, and meanwhile still gets its tokens — from the server each time,
// since a client caches nothing until its watch has started. Once another
// client closes, its watch starts and its tokens are cached.
func TestClientBeyondTheWatchLimitBacksOffAndStillGetsTokens(t *testing.T) {
	const n = 3
	e, err := startEnvWith(server.Limits{MaxWatchStreamsPerIdentity: n})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	if err := e.install(ctxT(t), "acme"); err != nil {
		t.Fatal(err)
	}
	// On an open server every caller from one host is one identity.
	var watchers []*client.Client
	for range n {
		watchers = append(watchers, e.watchingClient(t))
	}

	var (
		mu       sync.Mutex
		attempts []time.Time // WatchRevocations calls of the last client
		calls    int         // its GetAccessToken calls
	)
	countStreams := func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		if method == rotavaultv1.TokenVaultService_WatchRevocations_FullMethodName {
			mu.Lock()
			attempts = append(attempts, time.Now())
			mu.Unlock()
		}
		return streamer(ctx, desc, cc, method, opts...)
	}
	countCalls := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		mu.Lock()
		calls++
		mu.Unlock()
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStreamInterceptor(countStreams), grpc.WithUnaryInterceptor(countCalls))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	const backoff = 300 * time.Millisecond // below the server's RetryInfo, so the client waits this long
	last, err := client.New(conn, client.WithClock(e.clock.now), client.WithBackoff(backoff, backoff))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = last.Close() })

	await(t, "two refused watch attempts", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(attempts) >= 2
	})
	if last.WatchStarts() != 0 {
		t.Fatalf("client %d of one identity started its watch; the server allows %d", n+1, n)
	}
	for range 3 {
		mustToken(t, last, "acme")
	}
	mu.Lock()
	if calls != 3 {
		t.Errorf("3 tokens without a watch took %d calls, want 3 (nothing cached before the watch starts)", calls)
	}
	for i := 1; i < len(attempts); i++ {
		if gap := attempts[i].Sub(attempts[i-1]); gap < backoff {
			t.Errorf("watch attempt %d came %v after the previous one, want at least the backoff %v", i+1, gap, backoff)
		}
	}
	mu.Unlock()

	// A slot freed, the watch starts; then tokens come from the cache.
	_ = watchers[0].Close()
	if err := last.AwaitWatchStarts(ctxT(t), 1); err != nil {
		t.Fatalf("the watch did not start after another client closed: %v", err)
	}
	mustToken(t, last, "acme")
	mustToken(t, last, "acme")
	mu.Lock()
	defer mu.Unlock()
	if calls > 4 {
		t.Errorf("with the watch started, 2 tokens took %d calls, want at most 1", calls-3)
	}
}
