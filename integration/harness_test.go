// Package integration runs Rotavault end to end: the real gRPC server, the
// rotation logic, the embedded encrypted store and real authorization servers
// (our Salesforce simulator and ory/fosite) on loopback.
package integration

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/boltstore"
	"github.com/rotavault/rotavault/broker"
	"github.com/rotavault/rotavault/broker/option"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/node"
	"github.com/rotavault/rotavault/internal/syncbuf"
	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/server"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/tracing"
	"github.com/rotavault/rotavault/vaultstore"
)

const (
	simClientID     = "3MVG9-rotavault-test"
	simClientSecret = "sim-client-secret-5f0e1c"
	callbackURI     = "http://127.0.0.1:1/callback"
	// accessLifetime is short so tests can step past it with the fake clock.
	accessLifetime = 10 * time.Minute
	// awaitDeadline bounds every wait for an asynchronous outcome (a notice);
	// generous because it is a deadline, not a measurement.
	awaitDeadline = 10 * time.Second
)

// testClock is the broker's clock: real time plus an offset tests advance to
// make tokens expire without waiting.
type testClock struct{ offset atomic.Int64 }

func (c *testClock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *testClock) advance(d time.Duration) { c.offset.Add(int64(d)) }

type envOptions struct {
	sim        providersim.Config
	brokerOpts []option.Option
	// vault, when set, keeps the node's records in this Vault server (KV v2
	// with check-and-set) instead of the embedded store, with a token that
	// has only the policy in deploy/.
	vault *vaulttest.Server
	// vaultTransit envelope-encrypts the Vault records with the server's
	// Transit key (and a token that has the Transit policy too).
	vaultTransit bool
	// vaultLogin, when set, logs the Vault store in (AppRole) instead of
	// using the server's token.
	vaultLogin vaultstore.LoginMethod
	// rateLimit is the server's per-caller limit (zero: the defaults, which
	// every test must pass with).
	rateLimit server.RateLimit
	// serverConfig, when set, adjusts the gRPC server's configuration.
	serverConfig func(*server.Config)
	// wrapStore, when set, wraps the store the broker uses (to count calls).
	wrapStore func(store.Store) store.Store
	// vaultRequests, when set with vault, counts the HTTP requests the
	// store sends Vault.
	vaultRequests **vaulttest.Requests
	// tracing, when set, traces the node as OTEL_* variables make
	// rotavault serve trace it.
	tracing *tracing.Tracing
	// logLevel is the node's log level (nil: debug, every line).
	logLevel slog.Leveler
}

// env is one Rotavault node wired to a simulator, with clients.
type env struct {
	t       testing.TB
	sim     *providersim.Server
	clock   *testClock
	dataDir string
	key     boltstore.Key
	logs    *syncbuf.Buffer
	opts    envOptions

	// node holds what start opened; stop closes it.
	node   *node.Node
	store  store.Store
	audit  *audit.FileLog
	broker *broker.Broker
	srv    *server.Server
	conn   *grpc.ClientConn
	vault  rotavaultv1.TokenVaultServiceClient
	admin  rotavaultv1.CredentialAdminServiceClient
	// replicaDirs are the data directories of replicas started from this
	// env, for the leak check.
	replicaDirs []string
}

func newEnv(t testing.TB, opts envOptions) *env {
	t.Helper()
	dir := t.TempDir()
	key, err := boltstore.GenerateKeyFile(filepath.Join(dir, "store.key"))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, clock: &testClock{}, dataDir: dir, key: key, logs: &syncbuf.Buffer{}, opts: opts}
	sim, err := providersim.Start(opts.sim)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	sim.AddClient(providersim.Client{ID: simClientID, Secret: simClientSecret, RedirectURIs: []string{callbackURI}, RequirePKCE: true})
	e.sim = sim
	// Registered before e.stop, so it runs after the servers (and the
	// replicas started later) have stopped and written their last lines.
	t.Cleanup(func() {
		texts := auditText(t, append([]string{dir}, e.replicaDirs...)...)
		texts["server logs"] = e.logs.String()
		checkNoSecrets(t, secretsOf(t, sim, filepath.Join(dir, "store.key"), opts.vault), texts)
	})
	e.start()
	t.Cleanup(e.stop)
	return e
}

// start assembles a node as rotavault serve does (internal/node): opens
// the store and serves on a fresh loopback port.
func (e *env) start() {
	t := e.t
	t.Helper()
	level := e.opts.logLevel
	if level == nil {
		level = slog.LevelDebug
	}
	logger := e.opts.tracing.Logger(slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: level})))
	n := node.New(node.Config{Logger: logger, Tracing: e.opts.tracing})
	e.node = n
	st := e.openStore(n)
	// Replicas share a Vault store but write their own trails: one head each.
	al, err := n.OpenAudit(context.Background(), audit.Config{Path: filepath.Join(e.dataDir, "audit.jsonl"), Store: st,
		HeadKey: "audit/heads/" + filepath.Base(e.dataDir)})
	if err != nil {
		t.Fatal(err)
	}
	opts := append([]option.Option{
		option.WithClock(e.clock.now), option.WithLogger(logger),
		option.WithRetryBase(5 * time.Millisecond), option.WithSchedulerInterval(time.Hour),
		// Periodic introspection would race tests that jump the clock past a
		// revocation; detect_test.go turns it on.
		option.WithIntrospectionInterval(0),
	}, e.opts.brokerOpts...)
	brokerStore := st
	if e.opts.wrapStore != nil {
		brokerStore = e.opts.wrapStore(st)
	}
	b, err := n.NewBroker(context.Background(), broker.Config{Store: brokerStore, Provider: n.NewProvider(), Auditor: al}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	// The consumer catalog is on, as in rotavault serve.
	cfg := server.Config{Broker: b, Credentials: b.Credentials(), Flows: b.Flows(), Catalog: b.Catalog(), Logger: logger, Reflection: true, RateLimit: e.opts.rateLimit, Auditor: al, ConsumerCatalog: true}
	if e.opts.serverConfig != nil {
		e.opts.serverConfig(&cfg)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := n.ServeGRPC(cfg, lis)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	n.OnClose("test client connection", func(context.Context) error { return conn.Close() })
	e.store, e.audit, e.broker, e.srv, e.conn = st, al, b, srv, conn
	e.vault = rotavaultv1.NewTokenVaultServiceClient(conn)
	e.admin = rotavaultv1.NewCredentialAdminServiceClient(conn)
}

func (e *env) openStore(n *node.Node) store.Store {
	t := e.t
	if e.opts.vault != nil {
		cfg := vaultstore.Config{Client: e.opts.vault.Client(t), Prefix: vaultstore.DefaultPrefix + "/" + e.key.ID(), Login: e.opts.vaultLogin}
		if e.opts.vaultTransit {
			cfg.Client, cfg.TransitKey = e.opts.vault.TransitClient(t), vaulttest.TransitKey
		}
		if e.opts.vaultRequests != nil {
			cfg.Client, *e.opts.vaultRequests = e.opts.vault.CountingClient(t)
		}
		if e.opts.vaultLogin != nil {
			cfg.Client.ClearToken()
		}
		vs, err := n.OpenVaultStore(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		return vs
	}
	bs, err := n.OpenEmbeddedStore(filepath.Join(e.dataDir, "rotavault.db"), e.key, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return bs
}

// stop closes the node, newest part first: the client connection, the
// server (gracefully), the broker, the audit trail (which may anchor a
// lagging head) and the store.
func (e *env) stop() {
	if e.node == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = e.node.Close(ctx)
	e.node, e.srv = nil, nil
}

func (e *env) restart() {
	e.stop()
	e.start()
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// salesforceSpec describes the simulator's connected app.
func (e *env) salesforceSpec() *rotavaultv1.CredentialSpec {
	return &rotavaultv1.CredentialSpec{
		ProviderKind:        rotavaultv1.ProviderKind_PROVIDER_KIND_SALESFORCE,
		BaseUrl:             e.sim.URL(),
		ClientId:            simClientID,
		ClientSecret:        simClientSecret,
		Scopes:              []string{"api", "refresh_token"},
		AccessTokenLifetime: durationpb.New(accessLifetime),
	}
}

// installSalesforce registers a credential and imports a fresh family from
// the simulator. It returns the imported (now superseded) refresh token, the
// "old token" a thief could hold.
func (e *env) installSalesforce(id string, mutate ...func(*rotavaultv1.CredentialSpec)) string {
	t := e.t
	t.Helper()
	spec := e.salesforceSpec()
	for _, m := range mutate {
		m(spec)
	}
	if _, err := e.admin.CreateCredential(ctxT(t), &rotavaultv1.CreateCredentialRequest{CredentialId: id, Spec: spec}); err != nil {
		t.Fatalf("create %s: %v", id, err)
	}
	rt, err := e.sim.IssueRefreshToken(simClientID, []string{"api", "refresh_token"})
	if err != nil {
		t.Fatal(err)
	}
	e.importToken(id, rt)
	return rt
}

func (e *env) importToken(id, refreshToken string) *rotavaultv1.FamilyActivated {
	e.t.Helper()
	resp, err := e.vault.Reauthenticate(ctxT(e.t), &rotavaultv1.ReauthenticateRequest{
		CredentialId: id,
		Flow:         &rotavaultv1.ReauthenticateRequest_RefreshTokenImport{RefreshTokenImport: &rotavaultv1.RefreshTokenImport{RefreshToken: refreshToken}},
	})
	if err != nil {
		e.t.Fatalf("import into %s: %v", id, err)
	}
	return resp.GetFamilyActivated()
}

func (e *env) token(id string) *rotavaultv1.GetAccessTokenResponse {
	e.t.Helper()
	resp, err := e.vault.GetAccessToken(ctxT(e.t), &rotavaultv1.GetAccessTokenRequest{CredentialId: id})
	if err != nil {
		e.t.Fatalf("token %s: %v", id, err)
	}
	return resp
}

// expire steps the broker's clock past every access token's lifetime.
func (e *env) expire() { e.clock.advance(accessLifetime + time.Minute) }

// watch opens a revocation stream and waits until it is live.
func (e *env) watch(ctx context.Context, cursor string, ids ...string) (grpc.ServerStreamingClient[rotavaultv1.WatchRevocationsResponse], string) {
	e.t.Helper()
	stream, err := e.vault.WatchRevocations(ctx, &rotavaultv1.WatchRevocationsRequest{CredentialIds: ids, Cursor: cursor})
	if err != nil {
		e.t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		e.t.Fatalf("watch: %v", err)
	}
	if first.GetStarted() == nil {
		e.t.Fatalf("first message is %v, want started", first)
	}
	return stream, first.GetStarted().GetCursor()
}

// nextNotice awaits a notice with a generous deadline.
func nextNotice(t testing.TB, stream grpc.ServerStreamingClient[rotavaultv1.WatchRevocationsResponse]) *rotavaultv1.Notice {
	t.Helper()
	type result struct {
		n   *rotavaultv1.Notice
		err error
	}
	ch := make(chan result, 1)
	go func() {
		m, err := stream.Recv()
		ch <- result{m.GetNotice(), err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("watch: %v", r.err)
		}
		return r.n
	case <-time.After(awaitDeadline):
		t.Fatalf("no notice within %s", awaitDeadline)
		return nil
	}
}

// errorReason returns the ErrorInfo reason of a gRPC error, if any.
func errorReason(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return ""
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}

func wantCode(t testing.TB, err error, code codes.Code, reason string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v, want code %s", err, code)
	}
	if reason != "" && errorReason(err) != reason {
		t.Fatalf("got reason %q (%v), want %q", errorReason(err), err, reason)
	}
}

// replica starts another node sharing this one's provider, clock and Vault
// path: what a second Rotavault replica behind a load balancer is.
func (e *env) replica() *env {
	e.t.Helper()
	if e.opts.vault == nil {
		e.t.Fatal("replicas share a Vault store; set envOptions.vault")
	}
	r := &env{t: e.t, sim: e.sim, clock: e.clock, dataDir: e.t.TempDir(), key: e.key, logs: e.logs, opts: e.opts}
	e.replicaDirs = append(e.replicaDirs, r.dataDir)
	r.start()
	e.t.Cleanup(r.stop)
	return r
}
