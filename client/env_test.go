package client_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/client"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/node"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/server"
	"github.com/rotavault/rotavault/store/memstore"
)

const (
	simClientID     = "3MVG9-client-test"
	simClientSecret = "sim-client-secret-c1"
	// accessLifetime is the credentials' token lifetime; tests step past it
	// with the shared fake clock.
	accessLifetime = 10 * time.Minute
	// awaitDeadline bounds every wait for an asynchronous outcome.
	awaitDeadline = 20 * time.Second
)

// fakeClock is real time plus an offset that tests advance; the broker and
// the Client under test share it.
type fakeClock struct{ offset atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *fakeClock) advance(d time.Duration) { c.offset.Add(int64(d)) }

// env is a Rotavault node (real server, broker and store) on loopback with
// the Salesforce simulator, restartable on the same address.
type env struct {
	sim   *providersim.Server
	clock *fakeClock
	store *memstore.Store
	dir   string
	addr  string
	opts  []option.Option
	// limits are the server's (zero: its defaults).
	limits server.Limits

	// ctrl is the tests' own connection (setup, revocations); conn is the
	// Client's, whose GetAccessToken calls are counted.
	ctrl  *grpc.ClientConn
	vault rotavaultv1.TokenVaultServiceClient
	admin rotavaultv1.CredentialAdminServiceClient
	conn  *grpc.ClientConn
	calls atomic.Int64

	mu     sync.Mutex
	broker *broker.Broker
	// node holds the running server's parts; nil while stopped.
	node *node.Node
}

// startEnv starts a node; Close stops it. Examples use it directly, tests
// through newEnv.
func startEnv(brokerOpts ...option.Option) (*env, error) {
	return startEnvWith(server.Limits{}, brokerOpts...)
}

// startEnvWith is startEnv with the server's limits set.
func startEnvWith(limits server.Limits, brokerOpts ...option.Option) (*env, error) {
	dir, err := os.MkdirTemp("", "rotavault-client-")
	if err != nil {
		return nil, err
	}
	sim, err := providersim.Start(providersim.Config{})
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	sim.AddClient(providersim.Client{ID: simClientID, Secret: simClientSecret})
	e := &env{sim: sim, clock: &fakeClock{}, store: memstore.New(), dir: dir, addr: "127.0.0.1:0", opts: brokerOpts, limits: limits}
	if err := e.startNode(nil); err != nil {
		e.Close()
		return nil, err
	}
	// Short reconnection backoff: the tests restart the server.
	fast := grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, MaxDelay: 200 * time.Millisecond}})
	e.ctrl, err = grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()), fast)
	if err != nil {
		e.Close()
		return nil, err
	}
	e.vault = rotavaultv1.NewTokenVaultServiceClient(e.ctrl)
	e.admin = rotavaultv1.NewCredentialAdminServiceClient(e.ctrl)
	count := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == rotavaultv1.TokenVaultService_GetAccessToken_FullMethodName {
			e.calls.Add(1)
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	e.conn, err = grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()), fast, grpc.WithUnaryInterceptor(count))
	if err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// newEnv is startEnv for a test, stopped at its end.
func newEnv(t testing.TB, brokerOpts ...option.Option) *env {
	t.Helper()
	e, err := startEnv(brokerOpts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// startNode starts a broker and a server on the store, runs prepare (if
// set) before anyone can connect, then serves on e.addr. The parts are
// assembled as rotavault serve assembles them (internal/node).
func (e *env) startNode(prepare func(*broker.Broker) error) (err error) {
	ctx := context.Background()
	n := node.New(node.Config{})
	defer func() {
		if err != nil {
			_ = n.Close(ctx)
		}
	}()
	al, err := n.OpenAudit(ctx, audit.Config{Path: filepath.Join(e.dir, "audit.jsonl"), Store: e.store})
	if err != nil {
		return err
	}
	opts := append([]option.Option{
		option.WithClock(e.clock.now), option.WithRetryBase(5 * time.Millisecond), option.WithSchedulerInterval(time.Hour),
	}, e.opts...)
	b, err := n.NewBroker(ctx, broker.Config{Store: e.store, Provider: n.NewProvider(), Auditor: al}, opts...)
	if err != nil {
		return err
	}
	if prepare != nil {
		if err := prepare(b); err != nil {
			return err
		}
	}
	lis, err := net.Listen("tcp", e.addr)
	if err != nil {
		return err
	}
	n.ServeGRPC(server.Config{Broker: b, Credentials: b.Credentials(), Flows: b.Flows(), Catalog: b.Catalog(), Auditor: al, Limits: e.limits}, lis)
	e.mu.Lock()
	e.addr, e.broker, e.node = lis.Addr().String(), b, n
	e.mu.Unlock()
	return nil
}

// stopNode shuts the server down (watch streams end with UNAVAILABLE) and
// the broker with it; the store and the simulator stay.
func (e *env) stopNode() {
	e.mu.Lock()
	n := e.node
	e.node = nil
	e.mu.Unlock()
	if n == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = n.Close(ctx)
}

// restart stops the node and starts another on the same store and address,
// running prepare on its broker before it serves.
func (e *env) restart(prepare func(*broker.Broker) error) error {
	e.stopNode()
	return e.startNode(prepare)
}

// Close stops everything; idempotent.
func (e *env) Close() {
	if e.conn != nil {
		_ = e.conn.Close()
	}
	if e.ctrl != nil {
		_ = e.ctrl.Close()
	}
	e.stopNode()
	_ = e.sim.Close()
	_ = os.RemoveAll(e.dir)
}

// install registers a Salesforce credential and imports a fresh family.
func (e *env) install(ctx context.Context, id string) error {
	spec := &rotavaultv1.CredentialSpec{
		ProviderKind:        rotavaultv1.ProviderKind_PROVIDER_KIND_SALESFORCE,
		BaseUrl:             e.sim.URL(),
		ClientId:            simClientID,
		ClientSecret:        simClientSecret,
		Scopes:              []string{"api", "refresh_token"},
		AccessTokenLifetime: durationpb.New(accessLifetime),
	}
	if _, err := e.admin.CreateCredential(ctx, &rotavaultv1.CreateCredentialRequest{CredentialId: id, Spec: spec}); err != nil {
		return fmt.Errorf("create %s: %w", id, err)
	}
	return e.reauthenticate(ctx, id)
}

// reauthenticate installs a new family for id, as an operator importing a
// refresh token would.
func (e *env) reauthenticate(ctx context.Context, id string) error {
	rt, err := e.sim.IssueRefreshToken(simClientID, nil)
	if err != nil {
		return err
	}
	_, err = e.vault.Reauthenticate(ctx, &rotavaultv1.ReauthenticateRequest{
		CredentialId: id,
		Flow:         &rotavaultv1.ReauthenticateRequest_RefreshTokenImport{RefreshTokenImport: &rotavaultv1.RefreshTokenImport{RefreshToken: rt}},
	})
	if err != nil {
		return fmt.Errorf("import into %s: %w", id, err)
	}
	return nil
}

// revoke revokes id's family through the API, as an operator would.
func (e *env) revoke(ctx context.Context, id string) error {
	_, err := e.vault.RevokeCredential(ctx, &rotavaultv1.RevokeCredentialRequest{CredentialId: id, Reason: "client test"})
	return err
}

// subscribers is the number of watch streams the server holds.
func (e *env) subscribers() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.broker.SubscriberCount()
}

// expire steps the shared clock past every access token's lifetime.
func (e *env) expire() { e.clock.advance(accessLifetime + time.Minute) }

// newClient returns a Client on e's counted connection with e's clock,
// closed at the end of the test.
func (e *env) newClient(t testing.TB, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.New(e.conn, append([]client.Option{client.WithClock(e.clock.now), client.WithBackoff(5*time.Millisecond, 100*time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// watchingClient is newClient with its revocation watch started, so that
// its answers are cached.
func (e *env) watchingClient(t testing.TB, opts ...client.Option) *client.Client {
	t.Helper()
	c := e.newClient(t, opts...)
	if err := c.AwaitWatchStarts(ctxT(t), 1); err != nil {
		t.Fatal(err)
	}
	return c
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), awaitDeadline)
	t.Cleanup(cancel)
	return ctx
}

// await polls cond until it holds, failing the test after awaitDeadline.
func await(t testing.TB, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, awaitDeadline, what, cond)
}

// mustToken is c.Token that fails the test on error.
func mustToken(t testing.TB, c *client.Client, id string, opts ...client.TokenOption) client.Token {
	t.Helper()
	tok, err := c.Token(ctxT(t), id, opts...)
	if err != nil {
		t.Fatalf("token %s: %v", id, err)
	}
	return tok
}
