package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/rotavault/rotavault/broker"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/h2raw"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/internal/testpki"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store/memstore"
)

// boundsEnv is a plaintext server on 127.0.0.1 with the given limits and
// auth (nil: open), serving through Server.Serve (so the connection limits
// apply), with its metrics and logs at hand, over a broker on an empty
// in-memory store: refusals never reach it, calls let through do.
type boundsEnv struct {
	addr string
	reg  *prometheus.Registry
	logs *lockedBuffer
}

func newBoundsEnv(t *testing.T, limits Limits, auth *Auth) *boundsEnv {
	t.Helper()
	e := &boundsEnv{reg: prometheus.NewRegistry(), logs: &lockedBuffer{}}
	log := slog.New(slog.NewJSONHandler(e.logs, nil))
	if auth != nil {
		auth.log, auth.refusals = log, newRefusalLog(log)
	}
	b, err := broker.New(context.Background(), broker.Config{Store: memstore.New(), Provider: provider.New(nil), Auditor: &recordingAuditor{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	srv := New(Config{Broker: b, Credentials: b.Credentials(), Flows: b.Flows(), Catalog: b.Catalog(), Logger: log, Auth: auth, Limits: limits, Registerer: e.reg})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = lis.Addr().String()
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.GRPC.Stop()
		<-served
	})
	return e
}

// dial is a gRPC client connection from localIP (nil: any).
func (e *boundsEnv) dial(t *testing.T, localIP net.IP, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if localIP != nil {
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{LocalAddr: &net.TCPAddr{IP: localIP}}).DialContext(ctx, "tcp", addr)
		}))
	}
	conn, err := grpc.NewClient(e.addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func (e *boundsEnv) raw(t *testing.T, localIP net.IP) *h2raw.Conn {
	t.Helper()
	c, err := h2raw.Dial(testCtx(t), e.addr, localIP)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// metric is the value of the counter or gauge name with labels, 0 if none.
func (e *boundsEnv) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if hasLabels(m, labels) {
				return m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, l := range m.GetLabel() {
		if v, ok := want[l.GetName()]; ok {
			if v != l.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

func deadline() time.Time { return time.Now().Add(awaitDeadline) }

// A header block that never ends is cut off at the header list limit: the
// server closes the connection instead of buffering (gRPC's default would
// hold up to 16 MiB per connection).
func TestUnfinishedHeaderBlockBeyondTheLimitClosesTheConnection(t *testing.T) {
	e := newBoundsEnv(t, Limits{}, nil)
	c := e.raw(t, nil)
	go func() { _ = c.SendUnfinishedHeaders(1, 1<<20) }()
	if err := c.AwaitClose(deadline()); err != nil {
		t.Fatalf("1 MiB of unfinished headers: the connection is still open (%v); want it closed at the %d-byte limit", err, DefaultMaxHeaderListSize)
	}
}

// The header list limit leaves room for real credentials: a 16 KiB bearer
// token (larger than any JWT an identity provider issues in practice) is
// accepted.
func TestLargeBearerTokenFitsTheHeaderLimit(t *testing.T) {
	token := strings.Repeat("t", 16<<10)
	e := newBoundsEnv(t, Limits{}, svcAdminAuth(t, token))
	conn := e.dial(t, nil, grpc.WithPerRPCCredentials(loopbackToken(token)))
	// Past authentication and authorization, the empty id is refused.
	_, err := rotavaultv1.NewTokenVaultServiceClient(conn).GetAccessToken(testCtx(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: ""})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a 16 KiB bearer token: %v; want it past authentication (INVALID_ARGUMENT for the empty id)", err)
	}
}

// svcAdminAuth authenticates the bearer token as "svc", an admin.
func svcAdminAuth(t *testing.T, token string) *Auth {
	t.Helper()
	ts, err := ParseTokens([]byte("svc " + TokenDigest(token) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	policy, err := ParsePolicy([]byte(`{"rules":[{"identity":"svc","role":"admin"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	auth, err := NewAuth(AuthConfig{Policy: policy, Tokens: ts})
	if err != nil {
		t.Fatal(err)
	}
	return auth
}

type loopbackToken string

func (b loopbackToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (loopbackToken) RequireTransportSecurity() bool { return false }

// Streams beyond the per-connection limit are refused (REFUSED_STREAM);
// without a limit gRPC accepts 2^32 - 1.
func TestStreamsPerConnectionAreBounded(t *testing.T) {
	e := newBoundsEnv(t, Limits{MaxConcurrentStreams: 3}, nil)
	c := e.raw(t, nil)
	for _, id := range []uint32{1, 3, 5, 7} {
		if err := c.Call(id, healthWatchMethod, nil); err != nil {
			t.Fatal(err)
		}
	}
	answered := 0
	for answered < 4 {
		ev, err := c.Next(deadline())
		if err != nil {
			t.Fatalf("after %d answers: %v", answered, err)
		}
		answered++
		switch {
		case ev.StreamID == 7 && ev.Refused:
			return
		case ev.StreamID == 7:
			t.Fatalf("the 4th stream on a connection limited to 3 was served (%+v)", ev)
		case ev.RSTCode != 0:
			t.Fatalf("stream %d reset: %v", ev.StreamID, ev.RSTCode)
		}
	}
	t.Fatal("the 4th stream was never refused")
}

// A connection that never completes its handshake is closed after the
// handshake timeout (gRPC's default: 120 s).
func TestSilentConnectionIsClosedAfterTheHandshakeTimeout(t *testing.T) {
	e := newBoundsEnv(t, Limits{HandshakeTimeout: 200 * time.Millisecond}, nil)
	nc, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetReadDeadline(deadline())
	_, err = io.Copy(io.Discard, nc) // the server's SETTINGS, then the close
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("a connection that sent nothing is still open after %v", awaitDeadline)
	}
}

// A connection with no call in flight is closed after the idle time; the
// client reconnects when it next calls.
func TestIdleConnectionIsClosed(t *testing.T) {
	e := newBoundsEnv(t, Limits{MaxConnectionIdle: 200 * time.Millisecond}, nil)
	conn := e.dial(t, nil)
	health := healthpb.NewHealthClient(conn)
	if _, err := health.Check(testCtx(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	for s := conn.GetState(); s != connectivity.Idle; s = conn.GetState() {
		if !conn.WaitForStateChange(ctx, s) {
			t.Fatalf("the idle connection is still %v after %v", s, awaitDeadline)
		}
	}
	if _, err := health.Check(testCtx(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("after the idle close: %v", err)
	}
}

// Health watches need no credentials, so their number is capped, and one
// source may hold only a tenth of them (here 1 of 2): beyond either,
// RESOURCE_EXHAUSTED with a reason and a retry delay, counted by the per-RPC
// metrics; another host still gets its watch while one is at its share; a
// slot freed is available again.
func TestHealthWatchesAreCapped(t *testing.T) {
	e := newBoundsEnv(t, Limits{MaxHealthWatches: 2}, nil)
	hostA, hostB, hostC := net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2), net.IPv4(127, 0, 0, 3)
	watchFrom := func(ctx context.Context, host net.IP) error {
		w, err := healthpb.NewHealthClient(e.dial(t, host)).Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		_, err = w.Recv()
		return err
	}
	first, cancelFirst := context.WithCancel(testCtx(t))
	defer cancelFirst()
	if err := watchFrom(first, hostA); err != nil {
		t.Fatalf("a watch within the cap: %v", err)
	}
	assertRefusal(t, watchFrom(testCtx(t), hostA), ReasonTooManyHealthWatches) // hostA's share is 1
	if err := watchFrom(testCtx(t), hostB); err != nil {
		t.Fatalf("another host's watch while the first is at its share: %v", err)
	}
	assertRefusal(t, watchFrom(testCtx(t), hostC), ReasonTooManyHealthWatches) // 2 open in all
	if got := e.metric(t, "grpc_server_handled_total", map[string]string{"grpc_method": "Watch", "grpc_code": "ResourceExhausted"}); got != 2 {
		t.Errorf("grpc_server_handled_total{Watch, ResourceExhausted} = %v, want 2", got)
	}
	cancelFirst()
	poll.Until(t, awaitDeadline, "a watch after one ended", func() bool {
		return watchFrom(testCtx(t), hostC) == nil
	})
}

func assertRefusal(t *testing.T, err error, reason string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted {
		t.Fatalf("%v; want RESOURCE_EXHAUSTED", err)
	}
	var gotReason string
	var retry bool
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			gotReason = d.GetReason()
		case *errdetails.RetryInfo:
			retry = d.GetRetryDelay().AsDuration() > 0
		}
	}
	if gotReason != reason || !retry {
		t.Fatalf("details: reason %q, retry info %v; want %s with a retry delay", gotReason, retry, reason)
	}
}

// Connections beyond the per-host or total limit are closed as soon as
// accepted and counted; another host still gets in while one is at its
// limit, and a closed connection frees its slot.
func TestConnectionLimits(t *testing.T) {
	e := newBoundsEnv(t, Limits{HandshakeTimeout: time.Minute, Connections: ConnLimits{Total: 3, PerHost: 2}}, nil)
	hostA, hostB, hostC := net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2), net.IPv4(127, 0, 0, 3)
	open := func() float64 { return e.metric(t, "rotavault_grpc_connections_open", nil) }
	refused := func(reason string) float64 {
		return e.metric(t, "rotavault_grpc_connections_refused_total", map[string]string{"reason": reason})
	}
	a1, _ := e.raw(t, hostA), e.raw(t, hostA)
	poll.Until(t, awaitDeadline, "two connections open", func() bool { return open() == 2 })

	if err := h2raw.AwaitRefused(testCtx(t), e.addr, hostA, deadline()); err != nil {
		t.Fatalf("a third connection from one host with a limit of 2 is still open: %v", err)
	}
	if got := refused(refusedConnectionsByHost); got != 1 {
		t.Errorf("refused per host = %v, want 1", got)
	}
	// Another host is not held back by the first one's limit.
	if _, err := healthpb.NewHealthClient(e.dial(t, hostB)).Check(testCtx(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("a call from another host: %v", err)
	}
	if err := h2raw.AwaitRefused(testCtx(t), e.addr, hostC, deadline()); err != nil {
		t.Fatalf("a fourth connection with a total limit of 3 is still open: %v", err)
	}
	if got := refused(refusedConnections); got != 1 {
		t.Errorf("refused in total = %v, want 1", got)
	}
	_ = a1.Close()
	poll.Until(t, awaitDeadline, "the closed connection's slot freed", func() bool { return open() == 2 })
	if _, err := healthpb.NewHealthClient(e.dial(t, hostA)).Check(testCtx(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("a call from the first host after one of its connections closed: %v", err)
	}
}

// Refused calls cost no access-log line each: they are counted by the
// per-RPC metrics by code and logged at most once per second per reason.
func TestRefusedCallsAreCountedAndLoggedSampled(t *testing.T) {
	e := newBoundsEnv(t, Limits{}, svcAdminAuth(t, "a token nobody presents"))
	vault := rotavaultv1.NewTokenVaultServiceClient(e.dial(t, nil))
	const calls = 200
	start := time.Now()
	for range calls {
		_, err := vault.GetAccessToken(testCtx(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "c"})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("%v; want UNAUTHENTICATED", err)
		}
	}
	elapsed := time.Since(start)
	// Refused as their headers arrived, before gRPC's handling began
	// (TestUnauthenticatedCallIsRefusedBeforeItsRequestIsRead): counted
	// apart.
	if got := e.metric(t, "rotavault_grpc_unauthenticated_calls_total", nil); got != calls {
		t.Errorf("rotavault_grpc_unauthenticated_calls_total = %v, want %d", got, calls)
	}
	logs := e.logs.String()
	lines := strings.Count(logs, "\n")
	if limit := int(elapsed/refusalLogInterval) + 1; lines > limit {
		t.Errorf("%d refused calls in %v wrote %d log lines, want at most %d:\n%.2000s", calls, elapsed, lines, limit, logs)
	}
	if !strings.Contains(logs, `"refusal":"unauthenticated"`) {
		t.Errorf("no sampled line for the refusals:\n%s", logs)
	}
}

// gRPC reads a unary call's whole request before any interceptor runs: a
// caller allowed nothing that never finishes its message would hold a
// buffer of up to MaxRecvMsgSize and a goroutine per stream, 1,000 streams
// a connection (against `serve`, 10 such connections took its RSS from 83
// to 813 MB). It is refused as soon as its headers arrive, its message
// unread.
func TestUnauthenticatedCallIsRefusedBeforeItsRequestIsRead(t *testing.T) {
	e := newBoundsEnv(t, Limits{}, svcAdminAuth(t, "a token nobody presents"))
	c := e.raw(t, nil)
	if err := c.CallUnfinished(1, rotavaultv1.TokenVaultService_GetAccessToken_FullMethodName, MaxRecvMsgSize-100, 1000); err != nil {
		t.Fatal(err)
	}
	ev, err := c.Next(time.Now().Add(2 * time.Second))
	if err != nil {
		t.Fatalf("no answer to an unauthenticated call whose message is unfinished: %v", err)
	}
	if ev.StreamID != 1 {
		t.Fatalf("answer %+v, want stream 1 answered", ev)
	}
	if got := e.metric(t, "rotavault_grpc_unauthenticated_calls_total", nil); got != 1 {
		t.Errorf("rotavault_grpc_unauthenticated_calls_total = %v, want 1", got)
	}
}

// An identified caller cannot hold unbounded request buffers either: at
// most its watch-stream limit plus 1,000 calls in flight (against `serve`,
// a consumer's 10 connections of 1,000 unfinished streams took its RSS
// from 107 to 830 MB). Beyond, RESOURCE_EXHAUSTED before the request is
// read; a call's place is given back when its stream ends.
func TestCallsInFlightPerIdentityAreBounded(t *testing.T) {
	e := newBoundsEnv(t, Limits{MaxWatchStreamsPerIdentity: 2}, svcAdminAuth(t, "svc-token"))
	auth := hpack.HeaderField{Name: "authorization", Value: "Bearer svc-token"}
	const limit = callsInFlightRoom + 2
	conns := []*h2raw.Conn{e.raw(t, nil), e.raw(t, nil)}
	for i := range limit {
		c, id := conns[i/900], uint32(2*(i%900)+1)
		if err := c.CallUnfinished(id, rotavaultv1.TokenVaultService_GetAccessToken_FullMethodName, 1000, 10, auth); err != nil {
			t.Fatal(err)
		}
	}
	// The server reads the connections concurrently: call again until the
	// calls above are all counted and one beyond them is refused.
	over, id := e.raw(t, nil), uint32(1)
	poll.Until(t, 10*time.Second, "a call beyond the identity's limit refused", func() bool {
		if err := over.CallUnfinished(id, rotavaultv1.TokenVaultService_GetAccessToken_FullMethodName, 1000, 10, auth); err != nil {
			t.Fatal(err)
		}
		id += 2
		ev, err := over.Next(time.Now().Add(200 * time.Millisecond))
		return err == nil && ev.StreamID != 0
	})
	if id > 2*50+1 {
		t.Errorf("%d calls accepted beyond the %d before one was refused", (id-1)/2-1, limit)
	}
	// Each call the loop made waited 200 ms for its refusal; on a loaded
	// machine an earlier one may be refused after its wait: count them all.
	if got, sent := e.metric(t, "rotavault_grpc_calls_in_flight_refused_total", nil), float64((id-1)/2); got < 1 || got > sent {
		t.Errorf("rotavault_grpc_calls_in_flight_refused_total = %v, want between 1 and the %v calls made beyond the limit", got, sent)
	}
	// The first connection's 900 calls end with it: the identity may call again.
	_ = conns[0].Close()
	vault := rotavaultv1.NewTokenVaultServiceClient(e.dial(t, nil, grpc.WithPerRPCCredentials(loopbackToken("svc-token"))))
	poll.Until(t, 5*time.Second, "a call once others ended", func() bool {
		_, err := vault.GetAccessToken(testCtx(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "c"})
		return status.Code(err) == codes.NotFound
	})
}

// The sampler: one line per reason per second, the next one saying how
// many it left out.
func TestRefusalLogSamplesPerReason(t *testing.T) {
	var buf lockedBuffer
	r := newRefusalLog(slog.New(slog.NewJSONHandler(&buf, nil)))
	now := time.Unix(1_700_000_000, 0)
	r.now = func() time.Time { return now }
	ctx := context.Background()
	for range 100 {
		r.refuse(ctx, refusedUnauthenticated, "call unauthenticated")
		r.refuse(ctx, refusedRateLimited, "call refused: rate limit")
	}
	now = now.Add(refusalLogInterval)
	r.refuse(ctx, refusedUnauthenticated, "call unauthenticated")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3 (one per reason, then one a second later):\n%s", len(lines), buf.String())
	}
	if !strings.Contains(lines[2], `"refusal":"unauthenticated","suppressed":99`) {
		t.Errorf("the line a second later does not count the 99 suppressed: %s", lines[2])
	}
}

// Client certificates travel in the TLS handshake, not in headers: a large
// one (400 DNS SANs, about 12 KiB) authenticates within the default limits
// and handshake timeout.
func TestLargeClientCertificateFitsTheLimits(t *testing.T) {
	e := newAuthEnv(t, authEnvOptions{})
	e.seed()
	var names []string
	for i := range 400 {
		names = append(names, fmt.Sprintf("replica-%03d.payments.rotavault.test", i))
	}
	cert := e.ca.KeyPair(t, testpki.Leaf{URIs: []string{idPayments}, DNS: names})
	if n := len(cert.Certificate[0]); n < 12<<10 {
		t.Fatalf("the certificate is %d bytes; the test wants a large one", n)
	}
	_, err := rotavaultv1.NewTokenVaultServiceClient(e.dialWith(e.ca, &cert, "")).GetAccessToken(testCtx(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "cred-a"})
	if c := status.Code(err); c == codes.Unauthenticated || c == codes.Unavailable || c == codes.PermissionDenied {
		t.Fatalf("a 12 KiB client certificate: %v; want it past authentication", err)
	}
}
