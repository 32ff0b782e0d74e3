// Package server is Rotavault's gRPC transport: it validates requests'
// shape, calls the rotation logic and maps its errors to statuses. It holds
// no rotation logic of its own.
package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/rotavault/rotavault/audit"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// MaxRecvMsgSize bounds request messages: no legitimate request comes near
// it (the largest field, an imported refresh token, is at most 4 KiB).
const MaxRecvMsgSize = 64 << 10

// Broker is what the assembled server needs of the rotation logic: each
// service's part and readiness. *broker.Broker is one.
type Broker interface {
	TokenBroker
	Readiness
}

// Readiness reports whether the rotation logic can serve (nil) or why not.
type Readiness interface {
	Ready() error
}

// Config assembles a gRPC server.
type Config struct {
	// Broker is the rotation logic behind both services; nil only in
	// tests of the transport alone (readiness is then not followed).
	Broker Broker
	// Credentials administers the credentials (the admin service's
	// Create/Update/Get/List/DeleteCredential); the broker's
	// (*registry.Credentials, broker.Broker.Credentials) is one.
	Credentials Credentials
	// Flows runs the authorization flows Reauthenticate starts and checks;
	// the broker's (*authflow.Flows, broker.Broker.Flows) is one.
	Flows AuthFlows
	// Catalog keeps the consumer catalog ListConsumers reads; the broker's
	// (*catalog.Catalog, broker.Broker.Catalog) is one.
	Catalog ConsumerCatalog
	Logger  *slog.Logger // nil: discard
	// Reflection serves the gRPC reflection service (grpcurl, dev tools).
	Reflection bool
	// ExtraOptions are appended to the server's options (e.g. credentials).
	ExtraOptions []grpc.ServerOption
	// Auth authenticates and authorizes every call but health checks. Nil
	// leaves the server open: every caller is DevIdentity, an admin. That
	// is for `rotavault dev` and tests on loopback only.
	Auth *Auth
	// RateLimit bounds each authenticated caller's request rate; the zero
	// value means DefaultRateLimit and DefaultRateBurst. Health checks are
	// not limited.
	RateLimit RateLimit
	// Auditor, when set, receives a summary of the access tokens each
	// caller got for each credential, every IssuanceFlushInterval
	// (DefaultIssuanceFlushInterval if zero) and at Shutdown.
	Auditor               Auditor
	IssuanceFlushInterval time.Duration
	// ConsumerCatalog, when set, also hands those per-caller aggregates
	// to Catalog (ListConsumers): a credential with a consumer new to
	// this replica at the same interval, the others once per ten intervals
	// (see catalogDue), and all at Shutdown; nothing is written per call.
	// Every interval it also merges the catalog's inboxes of the shards
	// this replica holds (catalog.Catalog.MergeInboxes).
	ConsumerCatalog bool
	// MaxConnectionAge closes a client connection after this long (zero:
	// DefaultMaxConnectionAge; negative: never), after a grace of
	// MaxConnectionAgeGrace (zero: DefaultMaxConnectionAgeGrace) for calls
	// in flight. Watch streams then end with UNAVAILABLE and clients resume
	// with their cursor, on whichever replica the load balancer picks: that
	// is what spreads long-lived streams over replicas added later.
	MaxConnectionAge      time.Duration
	MaxConnectionAgeGrace time.Duration
	// ShutdownDelay is how long Shutdown goes on serving after it reports
	// NOT_SERVING (health Check and Watch; Ready), before it stops taking
	// calls: time for load balancers and Kubernetes endpoints, which learn
	// of a replica going away from those probes only periodically, to send
	// new calls elsewhere. Zero stops at once.
	ShutdownDelay time.Duration
	// Limits bounds what any caller, allowed anything or not, can make
	// the server hold; the zero value means every default.
	Limits Limits
	// Registerer, when set, receives the per-RPC gRPC metrics (calls
	// started and handled by method and code, refused calls included;
	// handling time) and the connection limits' metrics.
	Registerer prometheus.Registerer
	// Operations serves the admin service's BackupStore, VerifyAuditTrail
	// and GetServerStatus RPCs.
	Operations Operations
	// LogSlowCall is the duration from which a successful routine read
	// (GetAccessToken, GetCredential, the lists, status and health checks)
	// is logged at INFO; faster ones are logged at DEBUG and only counted.
	// Zero means DefaultLogSlowCall.
	LogSlowCall time.Duration
}

// adminConfig wires the admin service; a nil broker counts nothing.
func adminConfig(cfg Config, log *slog.Logger) CredentialAdminConfig {
	ac := CredentialAdminConfig{Credentials: cfg.Credentials, Catalog: cfg.Catalog, Logger: log, Operations: cfg.Operations}
	if cfg.Broker != nil {
		ac.Ready = cfg.Broker
	}
	return ac
}

// Connection lifetime defaults. Load balancers commonly cut idle
// connections after 60 s to 10 min and all connections after an hour or
// more; pinging every 30 s keeps a quiet watch stream from looking idle, and
// ending connections every 30 min ourselves makes the cut orderly (GOAWAY,
// then UNAVAILABLE on the stream) instead of a reset.
const (
	DefaultKeepaliveTime         = 30 * time.Second
	DefaultMaxConnectionAge      = 30 * time.Minute
	DefaultMaxConnectionAgeGrace = 30 * time.Second
)

// Server is the assembled gRPC server with its health service.
type Server struct {
	GRPC   *grpc.Server
	Health *health.Server
	// conns are the connection limits Serve applies.
	conns       ConnLimits
	connMetrics connMetrics
	refusals    *refusalLog
	// drain ends every streaming call at shutdown.
	drain    context.CancelFunc
	issuance *issuanceCounter
	// readinessDone is closed when the readiness follower has stopped;
	// stopReadiness stops it.
	readinessDone chan struct{}
	stopReadiness context.CancelFunc
	// shuttingDown is set once Shutdown has begun: Ready fails from then.
	shuttingDown  atomic.Bool
	broker        Readiness
	shutdownDelay time.Duration
	log           *slog.Logger
}

// ErrShuttingDown is what Ready reports once Shutdown has begun.
var ErrShuttingDown = errors.New("shutting down")

// New builds a gRPC server with the token and admin services, the standard
// health service, optional reflection, and the interceptor chain: recovery
// (panics become INTERNAL without leaking state), access logging (never
// payloads), authentication and authorization (see Auth) and the caller's
// identity for the audit trail.
func New(cfg Config) *Server {
	log := loggerOrDiscard(cfg.Logger)
	authz := cfg.Auth
	if authz == nil {
		authz = openAuth(log)
	}
	limits := cfg.Limits.withDefaults()
	refusals := newRefusalLog(log)
	rec := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		log.ErrorContext(ctx, "panic in handler", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
		return status.Error(codes.Internal, "internal error")
	})
	draining, drain := context.WithCancel(context.Background())
	accessLog := accessLogger(log, cmp.Or(cfg.LogSlowCall, DefaultLogSlowCall), refusals)
	logOpts := []logging.Option{
		logging.WithLogOnEvents(logging.FinishCall),
		logging.WithFieldsFromContext(callerLogFields),
		logging.WithDurationField(durationField),
	}
	var unary []grpc.UnaryServerInterceptor
	var stream []grpc.StreamServerInterceptor
	var rpcMetrics *grpcprom.ServerMetrics
	if cfg.Registerer != nil {
		// Outermost, so that every call is counted by its final code,
		// refused ones included.
		rpcMetrics = grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets([]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30})))
		cfg.Registerer.MustRegister(rpcMetrics)
		unary = append(unary, rpcMetrics.UnaryServerInterceptor())
		stream = append(stream, rpcMetrics.StreamServerInterceptor())
	}
	unary = append(unary,
		recovery.UnaryServerInterceptor(rec),
		callerSlotUnary,
		logging.UnaryServerInterceptor(accessLog, logOpts...),
		authz.unaryAuthenticator(),
	)
	stream = append(stream,
		recovery.StreamServerInterceptor(rec),
		callerSlotStream,
		// Health watches need no credentials: bounded first, before the
		// access log allocates anything for a call it will not log.
		healthWatchCap(limits.MaxHealthWatches, refusals),
		logging.StreamServerInterceptor(accessLog, logOpts...),
		authz.streamAuthenticator(),
	)
	// After authentication, so that the limit is per identity; before
	// authorization, so that a caller hammering calls it is denied is
	// limited too.
	if rl := cfg.RateLimit.withDefaults(); !rl.Disabled {
		l := newCallerLimiter(rl, limiterKey, refusals)
		unary = append(unary, selector.UnaryServerInterceptor(l.unary, selector.MatchFunc(needsAuth)))
		stream = append(stream, selector.StreamServerInterceptor(l.stream, selector.MatchFunc(needsAuth)))
	}
	unary = append(unary, authz.unaryAuthorizer())
	stream = append(stream, authz.streamAuthorizer(),
		watchStreamCap(func(ctx context.Context) int { return authz.maxWatchStreams(ctx, limits.MaxWatchStreamsPerIdentity) }, refusals))
	unauthenticated := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "rotavault", Subsystem: "grpc", Name: "unauthenticated_calls_total",
		Help: "Calls refused as unauthenticated as soon as their headers arrived, before their request was read (not in grpc_server_handled_total).",
	})
	overLimit := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "rotavault", Subsystem: "grpc", Name: "calls_in_flight_refused_total",
		Help: "Calls refused with TOO_MANY_CALLS_IN_FLIGHT as soon as their headers arrived, their identity having as many in flight as it may (not in grpc_server_handled_total).",
	})
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(unauthenticated, overLimit)
	}
	opts := []grpc.ServerOption{
		grpc.InTapHandle(authz.tapAuthenticate(unauthenticated, overLimit, limits.MaxWatchStreamsPerIdentity)),
		grpc.MaxRecvMsgSize(MaxRecvMsgSize),
		grpc.ChainUnaryInterceptor(append(unary, actorUnary)...),
		grpc.ChainStreamInterceptor(append(stream, actorStream, drainStreams(draining))...),
		// Watch streams live for hours: ping idle connections so proxies
		// and load balancers do not drop them silently, and accept client
		// pings as often as every 10s.
		grpc.KeepaliveParams(cfg.keepalive(limits)),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}
	opts = append(opts, limits.serverOptions()...)
	opts = append(opts, grpc.NumStreamWorkers(streamWorkers))
	opts = append(opts, cfg.ExtraOptions...)
	gs := grpc.NewServer(opts...)
	var issuance *issuanceCounter
	if cfg.Auditor != nil || cfg.ConsumerCatalog {
		var catalog ConsumerCatalog
		if cfg.ConsumerCatalog {
			catalog = cfg.Catalog
		}
		issuance = newIssuanceCounter(cfg.Auditor, catalog, cfg.IssuanceFlushInterval, log)
	}
	rotavaultv1.RegisterTokenVaultServiceServer(gs, NewTokenVaultService(TokenVaultConfig{Broker: cfg.Broker, Flows: cfg.Flows, Logger: log, issuance: issuance, refused: newRefusedTokens(cfg.Registerer)}))
	rotavaultv1.RegisterCredentialAdminServiceServer(gs, NewCredentialAdminService(adminConfig(cfg, log)))
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	setHealth := func(st healthpb.HealthCheckResponse_ServingStatus) {
		for _, svc := range healthServices {
			hs.SetServingStatus(svc, st)
		}
	}
	setHealth(healthpb.HealthCheckResponse_SERVING)
	if cfg.Reflection {
		reflection.Register(gs)
	}
	if rpcMetrics != nil {
		rpcMetrics.InitializeMetrics(gs)
	}
	readinessCtx, stopReadiness := context.WithCancel(context.Background())
	s := &Server{GRPC: gs, Health: hs, drain: drain, issuance: issuance, readinessDone: make(chan struct{}), stopReadiness: stopReadiness,
		conns: limits.Connections, connMetrics: newConnMetrics(cfg.Registerer), refusals: refusals,
		shutdownDelay: max(cfg.ShutdownDelay, 0), log: log}
	if cfg.Broker != nil {
		s.broker = cfg.Broker
		go s.followReadiness(readinessCtx, cfg.Broker, setHealth, log)
	} else {
		close(s.readinessDone)
	}
	return s
}

// streamWorkers is how many goroutines wait to run calls, each keeping
// the stack earlier calls grew. Without them gRPC starts a goroutine per
// call, whose stack a handler's deep chain (interceptors, the broker, JSON
// records, a store commit) grows several times over, copying it each
// time: 6-9 % of an onboarding's CPU in profiles, 3-4 % with the
// workers (idle ones' stacks shrink at GC). 32 is the broker's own
// concurrency towards a provider; calls beyond it, and long watch
// streams, run on goroutines of their own as before.
const streamWorkers = 32

var healthServices = []string{"", rotavaultv1.TokenVaultService_ServiceDesc.ServiceName, rotavaultv1.CredentialAdminService_ServiceDesc.ServiceName}

// readinessInterval is how often the health service follows the broker's
// readiness.
const readinessInterval = time.Second

// followReadiness reports NOT_SERVING while the broker cannot reach its
// store, so load balancers and grpc-health-probe take this replica out;
// provider trouble leaves it SERVING (cached tokens still work). It ends
// when the server drains.
func (s *Server) followReadiness(ctx context.Context, b Readiness, set func(healthpb.HealthCheckResponse_ServingStatus), log *slog.Logger) {
	defer close(s.readinessDone)
	t := time.NewTicker(readinessInterval)
	defer t.Stop()
	serving := true
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := b.Ready()
		switch {
		case err != nil && serving:
			log.Warn("not ready: reporting NOT_SERVING", "err", err)
			set(healthpb.HealthCheckResponse_NOT_SERVING)
		case err == nil && !serving:
			log.Info("ready again: reporting SERVING")
			set(healthpb.HealthCheckResponse_SERVING)
		}
		serving = err == nil
	}
}

func (cfg Config) keepalive(l Limits) keepalive.ServerParameters {
	p := keepalive.ServerParameters{Time: DefaultKeepaliveTime, Timeout: 10 * time.Second}
	if l.MaxConnectionIdle > 0 {
		p.MaxConnectionIdle = l.MaxConnectionIdle
	}
	switch {
	case cfg.MaxConnectionAge == 0:
		p.MaxConnectionAge = DefaultMaxConnectionAge
	case cfg.MaxConnectionAge > 0:
		p.MaxConnectionAge = cfg.MaxConnectionAge
	}
	if p.MaxConnectionAge > 0 {
		p.MaxConnectionAgeGrace = cmp.Or(cfg.MaxConnectionAgeGrace, DefaultMaxConnectionAgeGrace)
	}
	return p
}

// Serve accepts connections on lis within the connection limits (see
// ConnLimits) and serves them until Shutdown; it returns what
// grpc.Server.Serve returns.
func (s *Server) Serve(lis net.Listener) error {
	return s.GRPC.Serve(newLimitListener(lis, s.conns, s.connMetrics, s.refusals))
}

// Ready reports whether this replica should be sent calls: not once
// Shutdown has begun (ErrShuttingDown), nor while the broker cannot reach
// its store. It is what the HTTP /readyz endpoint answers with.
func (s *Server) Ready() error {
	if s.shuttingDown.Load() {
		return ErrShuttingDown
	}
	if s.broker == nil {
		return nil
	}
	return s.broker.Ready()
}

// Shutdown marks the server NOT_SERVING (health Check and Watch, Ready), goes
// on serving for the ShutdownDelay so that load balancers take the replica
// out first, then ends the watch streams (UNAVAILABLE: resume elsewhere with
// the cursor) and stops gracefully, waiting at most for ctx.
func (s *Server) Shutdown(ctx context.Context) {
	s.stopReadiness()
	<-s.readinessDone // so that it cannot mark the server SERVING again
	s.shuttingDown.Store(true)
	s.Health.Shutdown()
	if s.shutdownDelay > 0 {
		s.log.InfoContext(ctx, "reporting NOT_SERVING; still serving until the shutdown delay ends", "delay", s.shutdownDelay)
		t := time.NewTimer(s.shutdownDelay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	s.drain()
	done := make(chan struct{})
	go func() {
		s.GRPC.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.GRPC.Stop()
		<-done
	}
	// After the last call: what it was handed is in the summary.
	if s.issuance != nil {
		s.issuance.close(context.WithoutCancel(ctx))
	}
}

// callerIdentity names the caller for the audit trail: the authenticated
// identity; the peer address only for calls that skip authentication
// (health checks).
func callerIdentity(ctx context.Context) string {
	if id, ok := IdentityFromContext(ctx); ok {
		return id
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return "peer:" + p.Addr.String()
	}
	return "unknown"
}

// limiterKey is the caller's identity, except that an open server's callers
// (DevIdentity/peer:HOST:PORT) share one bucket per host: a bucket per
// source port would let a client escape its limit by opening connections,
// and grow the limiter by one bucket per connection.
func limiterKey(ctx context.Context) string {
	id := callerIdentity(ctx)
	if addr, ok := strings.CutPrefix(id, DevIdentity+"/peer:"); ok {
		if host, _, err := net.SplitHostPort(addr); err == nil {
			return DevIdentity + "/peer:" + host
		}
	}
	return id
}

func actorUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	return handler(audit.WithActor(ctx, callerIdentity(ctx)), req)
}

func actorStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, &contextStream{ServerStream: ss, ctx: audit.WithActor(ss.Context(), callerIdentity(ss.Context()))})
}

type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }

// drainStreams ends streaming calls (watchers) when the server shuts down. A
// graceful stop waits for every call to end, and a watch stream never does
// on its own; ended with UNAVAILABLE, watchers reconnect (to another replica)
// and resume with their cursor.
func drainStreams(draining context.Context) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, cancel := context.WithCancel(ss.Context())
		defer cancel()
		unhook := context.AfterFunc(draining, cancel)
		defer unhook()
		err := handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
		if draining.Err() != nil && ss.Context().Err() == nil {
			return status.Error(codes.Unavailable, "the server is shutting down; reconnect and resume with the last cursor")
		}
		return err
	}
}
