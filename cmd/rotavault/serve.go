package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/boltstore"
	"github.com/rotavault/rotavault/broker"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/detect"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/node"
	"github.com/rotavault/rotavault/metrics"
	"github.com/rotavault/rotavault/server"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/tracing"
	"github.com/rotavault/rotavault/vaultstore"
)

const (
	storeFileName          = "rotavault.db"
	auditFileName          = "audit.jsonl"
	defaultShutdownTimeout = 30 * time.Second
	insecureListenFlag     = "insecure-plaintext-on-non-loopback"
	// oldInsecureListenFlag is the earlier name, kept as a deprecated alias.
	oldInsecureListenFlag = "insecure-listen-on-non-loopback-i-know-what-i-am-doing"
	backendEmbedded       = "embedded"
	backendVault          = "vault"
)

// serverConfig is everything runServer wires together.
type serverConfig struct {
	// Addr is where to listen, host:port; port 0 picks a free port.
	Addr string
	// AllowNonLoopback permits a non-loopback Addr without TLS and a
	// policy, which exposes tokens to the network.
	AllowNonLoopback bool
	// TLSCert and TLSKey are the server certificate; TLSClientCA enables
	// mTLS. PolicyFile authorizes callers (identified by client certificate
	// or by a bearer token from BearerTokensFile). All are re-read on
	// SIGHUP and when they change. Without PolicyFile the server is open:
	// every caller is an admin (dev only, loopback only).
	TLSCert, TLSKey, TLSClientCA string
	BearerTokensFile             string
	PolicyFile                   string
	// ReloadInterval is how often those files are checked for changes
	// (default server.DefaultReloadInterval).
	ReloadInterval time.Duration
	// RateLimit bounds each caller identity's request rate.
	RateLimit server.RateLimit
	// IssuanceFlushInterval is how often the access tokens handed out are
	// summarised into the audit trail and new consumers handed to the
	// consumer catalog (on a shared store: written to this replica's
	// inboxes, and the inboxes of the shards it holds merged); known ones
	// every ten intervals (zero: server.DefaultIssuanceFlushInterval).
	IssuanceFlushInterval time.Duration
	// LogSlowCall is server.Config's: routine reads that succeed faster
	// are logged at DEBUG only.
	LogSlowCall time.Duration
	// MaxConnectionAge and MaxConnectionAgeGrace are server.Config's.
	MaxConnectionAge, MaxConnectionAgeGrace time.Duration
	// AuditAnchorInterval is audit.Config.AnchorInterval: zero means the
	// default, negative anchors every record synchronously.
	AuditAnchorInterval time.Duration
	// AuditWitness is a file every anchored audit head is appended to
	// (audit.Config.Witness); empty: none.
	AuditWitness string
	// AcceptMissingAuditAnchor is audit.Config.AcceptMissingAnchor.
	AcceptMissingAuditAnchor bool
	// DataDir holds the store (rotavault.db) and the audit trail
	// (audit.jsonl); it is created (mode 0700) if missing.
	DataDir      string
	Key          boltstore.Key
	PreviousKeys []boltstore.Key
	// Backend is "embedded" (default: boltstore under DataDir, sealed with
	// Key) or "vault" (HashiCorp Vault KV v2, configured by the VAULT_*
	// environment, under VaultMount/VaultPrefix).
	Backend     string
	VaultMount  string
	VaultPrefix string
	// VaultAddrs are a Vault cluster's node addresses (vaultstore.Config's
	// Addresses); empty: VAULT_ADDR.
	VaultAddrs []string
	// VaultLogin logs in to Vault (AppRole, Kubernetes); nil uses VAULT_TOKEN.
	VaultLogin vaultstore.LoginMethod
	// VaultTransitKey envelope-encrypts records with this Transit key.
	VaultTransitKey, VaultTransitMount string
	Reflection                         bool
	Logger                             *slog.Logger // nil: discard
	// ShutdownTimeout bounds the graceful stop (default 30s); then
	// remaining calls are cut off.
	ShutdownTimeout time.Duration
	// ShutdownDelay is server.Config's: how long a stopping server goes
	// on serving while it reports NOT_SERVING; it comes before, not out
	// of, ShutdownTimeout.
	ShutdownDelay time.Duration
	BrokerOptions []option.Option
	// Ready, if set, is called once the server accepts connections. An
	// error stops the server, and runServer returns it.
	Ready func(ctx context.Context, s *runningServer) error
	// HTTPListen is where the HTTP endpoints (the OAuth callback) listen,
	// host:port; empty serves none, unless HTTPListener is set (dev, tests:
	// an address already bound).
	HTTPListen   string
	HTTPListener net.Listener
	// PublicURL is how browsers reach the HTTP endpoints (through a TLS
	// proxy, usually); <PublicURL>/oauth/callback is the redirect URI of
	// flows started without one. Empty: no server callback.
	PublicURL string
	// Limits bounds what callers can make the server hold (zero: the
	// defaults); CallbackTrustedProxies are the proxies whose
	// X-Forwarded-For the callback's per-source limit believes.
	Limits                 server.Limits
	CallbackTrustedProxies []string
	// Tracing, when set, traces the node (package tracing); runServer
	// shuts it down on return.
	Tracing *tracing.Tracing
	// wrapStore, when set, wraps the store the broker uses (tests: a
	// store that fails).
	wrapStore func(store.Store) store.Store
	// Node, when set, is the node the server is assembled on, holding
	// parts opened before it (dev: the simulator); runServer closes it
	// whole on return. Nil: a node of its own.
	Node *node.Node
}

// runningServer is what Ready learns about the server.
type runningServer struct {
	Addr   net.Addr
	Broker *broker.Broker
	// HTTPAddr is where the HTTP endpoints listen; nil without them.
	HTTPAddr net.Addr
}

// callbackOption turns the public URL into the broker's callback URL.
func (cfg *serverConfig) callbackOption() (option.Option, error) {
	if cfg.PublicURL == "" {
		return nil, nil
	}
	if err := credspec.ValidateEndpointURL(cfg.PublicURL); err != nil {
		return nil, usageErrorf("--public-url %q: %v", cfg.PublicURL, err)
	}
	return option.WithCallbackURL(strings.TrimRight(cfg.PublicURL, "/") + server.CallbackPath), nil
}

// runServer opens the store and the audit trail, builds the broker and the
// gRPC server, serves until ctx ends, then shuts down in reverse order of
// opening (internal/node): gRPC (gracefully, bounded by ShutdownTimeout),
// the HTTP endpoints, the broker, the audit trail and the store. A refused
// address is a *usageError; ctx ending is not an error.
func runServer(ctx context.Context, cfg serverConfig) (err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := cfg.Node
	if n == nil {
		n = node.New(node.Config{Logger: log, Tracing: cfg.Tracing})
	}
	// Every way out closes what was opened, newest first; the graceful
	// stops share ShutdownTimeout, after the ShutdownDelay.
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), max(cfg.ShutdownDelay, 0)+shutdownTimeout(cfg.ShutdownTimeout))
		defer cancel()
		_ = n.Close(sctx)
	}()
	if err := cfg.checkAuth(); err != nil {
		return err
	}
	if err := checkListenAddr(cfg.Addr, cfg.allowNonLoopback()); err != nil {
		return err
	}
	reloader, auth, err := cfg.loadAuth(log)
	if err != nil {
		return err
	}
	if cfg.DataDir == "" {
		return usageErrorf("a data directory is required (--data-dir or %s)", serverEnvName("data-dir"))
	}
	callback, err := cfg.callbackOption()
	if err != nil {
		return err
	}
	proxies, err := server.ParseTrustedProxies(cfg.CallbackTrustedProxies)
	if err != nil {
		return usageErrorf("--callback-trusted-proxy: %v", err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	st, ops, vaultNodeChanges, err := cfg.openStore(ctx, n, log)
	if err != nil {
		return err
	}
	acfg, err := auditConfig(cfg, st, log)
	if err != nil {
		return err
	}
	// Whoever passed the flag accepted a missing head: the trail says so.
	al, err := n.OpenAudit(audit.WithActor(ctx, "operator (--"+acceptMissingAnchorFlag+")"), acfg)
	if err != nil {
		return explainAuditOpen(err, acfg.Path)
	}
	ops.VerifyAudit, ops.AuditWitness = onlineAuditCheck(al, cfg.AuditWitness), cfg.AuditWitness != ""
	brokerOpts := append([]option.Option{option.WithLogger(log)}, cfg.BrokerOptions...)
	if cfg.Backend != backendVault {
		// The embedded store's file lock proves a claim left in it was a
		// previous process's: take it over at once after a restart.
		brokerOpts = append(brokerOpts, option.WithExclusiveStore())
	}
	if callback != nil {
		brokerOpts = append(brokerOpts, callback)
	}
	// The broker's calls to the store and the providers are timed for
	// /metrics; the audit trail's are not (it anchors in the background).
	mx := metrics.New()
	if vaultNodeChanges != nil {
		mx.WatchVaultNodes(vaultNodeChanges)
	}
	brokerStore := st
	if cfg.wrapStore != nil {
		brokerStore = cfg.wrapStore(st)
	}
	b, err := n.NewBroker(ctx, broker.Config{Store: mx.Store(brokerStore), Provider: mx.Provider(n.NewProvider()), Auditor: al}, brokerOpts...)
	if err != nil {
		return err
	}
	mx.WatchBroker(b, b.Credentials())

	var extra []grpc.ServerOption
	if tc := reloader.ServerTLSConfig(); tc != nil {
		extra = append(extra, grpc.Creds(credentials.NewTLS(tc)))
	}
	if auth == nil {
		log.Warn("no --policy: every caller is treated as the admin identity " + server.DevIdentity + "; for development on loopback only")
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	n.Go(ctx, "reloader", func(ctx context.Context) { reloader.Run(ctx, hup) })
	n.OnClose("SIGHUP handler", func(context.Context) error { signal.Stop(hup); return nil })
	lis, err := net.Listen("tcp", cfg.Addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return withHint(fmt.Errorf("listen: %w", err), "another server (rotavault serve or dev?) is using %s; stop it or choose another --addr", cfg.Addr)
	}
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if err := checkBoundAddr(lis.Addr(), cfg.allowNonLoopback()); err != nil {
		_ = lis.Close()
		return err
	}
	if !isLoopbackAddr(lis.Addr()) && (cfg.TLSCert == "" || auth == nil) {
		log.Warn("LISTENING ON A NON-LOOPBACK ADDRESS WITHOUT TLS AND A POLICY: anyone who reaches it can take access tokens and change credentials",
			"addr", lis.Addr().String())
	}
	httpLis := cfg.HTTPListener
	if httpLis == nil && cfg.HTTPListen != "" {
		if httpLis, err = net.Listen("tcp", cfg.HTTPListen); err != nil {
			_ = lis.Close()
			return withHint(fmt.Errorf("listen (HTTP): %w", err), "check --http-listen %s", cfg.HTTPListen)
		}
	}
	var httpAddr net.Addr
	var grpcServer atomic.Pointer[server.Server]
	if httpLis != nil {
		httpAddr = httpLis.Addr()
		if !isLoopbackAddr(httpAddr) {
			// Meant to sit behind a TLS-terminating proxy; PKCE keeps a
			// code seen on this hop useless without the stored verifier.
			log.Warn("HTTP endpoints listen in plaintext off loopback: put them behind a TLS-terminating proxy (--public-url https://...)", "addr", httpAddr.String())
		}
		// /readyz answers as the gRPC server does (not ready once it is
		// shutting down); the HTTP endpoints stop after it, so they are
		// there to say so during its shutdown delay.
		ready := func() error {
			if s := grpcServer.Load(); s != nil {
				return s.Ready()
			}
			return b.Ready()
		}
		n.ServeHTTP("HTTP endpoints", server.NewHTTPMux(server.HTTPConfig{Callback: b.Flows(), Logger: log, Ready: ready, Metrics: mx.Handler(), TrustedProxies: proxies}), httpLis)
		log.Info("HTTP endpoints serving", "addr", httpAddr.String(), "public_url", cfg.PublicURL)
	}
	grpcServer.Store(n.ServeGRPC(server.Config{Broker: b, Credentials: b.Credentials(), Flows: b.Flows(), Catalog: b.Catalog(), Logger: log, Reflection: cfg.Reflection, Auth: auth, ExtraOptions: extra, RateLimit: cfg.RateLimit, Auditor: al, ConsumerCatalog: true, IssuanceFlushInterval: cfg.IssuanceFlushInterval, LogSlowCall: cfg.LogSlowCall, MaxConnectionAge: cfg.MaxConnectionAge, MaxConnectionAgeGrace: cfg.MaxConnectionAgeGrace,
		Limits: cfg.Limits, Registerer: mx.Registry(), Operations: ops, ShutdownDelay: cfg.ShutdownDelay}, lis))
	// Closed first: long-polling reauth checks answer now, not at their
	// end, so the graceful stop does not wait for them.
	n.OnClose("broker waits", func(context.Context) error { b.Flows().StopWaiting(); return nil })
	log.Info("rotavault serving", "addr", lis.Addr().String(), "data_dir", cfg.DataDir, "store_key_id", cfg.Key.ID())

	if cfg.Ready != nil {
		if err := cfg.Ready(ctx, &runningServer{Addr: lis.Addr(), Broker: b, HTTPAddr: httpAddr}); err != nil {
			return err
		}
	}
	if err := n.Wait(ctx); err != nil {
		return err
	}
	log.Info("shutting down")
	return nil
}

// openStore opens the configured backend on n and describes it for the
// admin service's operations. nodeChanges, for /metrics, is the Vault
// store's count of moves to another cluster node (nil on the embedded store).
func (cfg *serverConfig) openStore(ctx context.Context, n *node.Node, log *slog.Logger) (st store.Store, ops server.Operations, nodeChanges func() int64, err error) {
	ops = server.Operations{StoreBackend: cfg.Backend}
	switch cfg.Backend {
	case "", backendEmbedded:
		bs, err := n.OpenEmbeddedStore(filepath.Join(cfg.DataDir, storeFileName), cfg.Key, boltstore.Options{PreviousKeys: cfg.PreviousKeys, Logger: log})
		if err != nil {
			return nil, ops, nil, err
		}
		ops.StoreBackend, ops.Snapshot, ops.StoreKeyID = backendEmbedded, bs.Snapshot, cfg.Key.ID()
		return bs, ops, nil, nil
	case backendVault:
		vs, err := n.OpenVaultStore(ctx, vaultstore.Config{Addresses: cfg.VaultAddrs, Mount: cfg.VaultMount, Prefix: cfg.VaultPrefix, Login: cfg.VaultLogin,
			TransitKey: cfg.VaultTransitKey, TransitMount: cfg.VaultTransitMount, Logger: log})
		if err != nil {
			return nil, ops, nil, err
		}
		return vs, ops, vs.NodeChanges, nil
	default:
		return nil, ops, nil, usageErrorf("unknown --store %q: embedded or vault", cfg.Backend)
	}
}

func shutdownTimeout(d time.Duration) time.Duration {
	if d <= 0 {
		return defaultShutdownTimeout
	}
	return d
}

// openStore opens DIR/rotavault.db, explaining a held lock.
func openStore(dataDir string, key boltstore.Key, opts boltstore.Options) (*boltstore.Store, error) {
	return node.OpenEmbedded(filepath.Join(dataDir, storeFileName), key, opts)
}

// checkListenAddr refuses, before anything is opened, an address that is
// not on loopback.
func checkListenAddr(addr string, allow bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return usageErrorf("--addr %q: %v", addr, err)
	}
	if allow || host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return refuseNonLoopback(addr)
}

// checkBoundAddr catches a name that resolved off loopback.
func checkBoundAddr(addr net.Addr, allow bool) error {
	if allow || isLoopbackAddr(addr) {
		return nil
	}
	return refuseNonLoopback(addr.String())
}

func isLoopbackAddr(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

func refuseNonLoopback(addr string) error {
	return usageErrorf("refusing to listen on %s: not a loopback address, and without TLS (--tls-cert, --tls-key) and a --policy anyone who reaches it can take access tokens and change credentials. Configure TLS and a policy, listen on 127.0.0.1, or pass --%s if you really mean it", addr, insecureListenFlag)
}

// allowNonLoopback: off loopback only with TLS and a policy, unless the
// operator insists.
func (cfg *serverConfig) allowNonLoopback() bool {
	return cfg.AllowNonLoopback || (cfg.TLSCert != "" && cfg.PolicyFile != "")
}

// checkAuth refuses combinations that would leave callers unable to
// authenticate, or authenticated but unchecked.
func (cfg *serverConfig) checkAuth() error {
	switch {
	case (cfg.TLSCert == "") != (cfg.TLSKey == ""):
		return usageErrorf("--tls-cert and --tls-key go together")
	case cfg.TLSClientCA != "" && cfg.TLSCert == "":
		return usageErrorf("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
	case cfg.PolicyFile != "" && cfg.TLSClientCA == "" && cfg.BearerTokensFile == "":
		return usageErrorf("--policy needs a way for callers to authenticate: --tls-client-ca (mTLS) or --bearer-tokens")
	case cfg.PolicyFile == "" && (cfg.TLSClientCA != "" || cfg.BearerTokensFile != ""):
		return usageErrorf("--tls-client-ca and --bearer-tokens need --policy: without one every caller is an admin")
	}
	return nil
}

// loadAuth reads the TLS material, tokens and policy. The Auth is nil
// without a policy (open server).
func (cfg *serverConfig) loadAuth(log *slog.Logger) (*server.Reloader, *server.Auth, error) {
	reloader, err := server.NewReloader(server.ReloaderConfig{
		PolicyFile: cfg.PolicyFile, TokensFile: cfg.BearerTokensFile,
		CertFile: cfg.TLSCert, KeyFile: cfg.TLSKey, ClientCAFile: cfg.TLSClientCA,
		// With bearer tokens accepted too, a client certificate is
		// verified if presented but not demanded.
		RequireClientCert: cfg.BearerTokensFile == "",
		Interval:          cfg.ReloadInterval, Logger: log,
	})
	if err != nil {
		return nil, nil, withHint(fmt.Errorf("load TLS, tokens or policy: %w", err), "check --tls-cert, --tls-key, --tls-client-ca, --bearer-tokens and --policy")
	}
	if cfg.PolicyFile == "" {
		return reloader, nil, nil
	}
	ac := server.AuthConfig{Policy: reloader, Logger: log}
	if cfg.BearerTokensFile != "" {
		ac.Tokens = reloader
	}
	auth, err := server.NewAuth(ac)
	if err != nil {
		return nil, nil, err
	}
	return reloader, auth, nil
}

func newServeCmd(a *app) *cobra.Command {
	var (
		addr                             string
		dataDir                          string
		keys                             keyFlags
		reflection                       bool
		insecure                         bool
		logs                             logFlags
		backend, vaultMount, vaultPrefix string
		vaultAddrs                       []string
		vaultAuth                        vaultAuthFlags
		claimTTL, claimMargin            time.Duration
		noticePoll, maxConnAge           time.Duration
		shutdownDelay                    time.Duration
		noticeRecords                    bool
		introspection, rejectedInterval  time.Duration
		transitKey, transitMount         string
		tlsCert, tlsKey, tlsClientCA     string
		bearerTokens, policyFile         string
		rateLimit                        float64
		auditAnchorInterval              time.Duration
		auditWitness                     string
		acceptMissingAnchor              bool
		rateBurst                        int
		httpListen, publicURL            string
		issuanceFlush                    time.Duration
		logSlowCall                      time.Duration
		limits                           limitFlags
		duties                           dutyFlags
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the Rotavault server",
		Long: `Run the Rotavault gRPC server: TokenVaultService, CredentialAdminService,
the standard health service and, with --reflection, server reflection.

State lives in the data directory: rotavault.db (the embedded store, every
value sealed with AES-256-GCM under the store key) and audit.jsonl (the
audit trail). The store key comes from --store-key-file (a file only its
owner may read) or from ROTAVAULT_SERVER_STORE_KEY (the base64 key itself). After
` + "`rotavault store rotate-key`" + `, point --store-key-file at the new key.

Without TLS the server listens on loopback only. With --tls-cert/--tls-key,
--tls-client-ca (mTLS) and/or --bearer-tokens, and a --policy, it may
listen anywhere: every call but health checks is authenticated, then
authorized by the policy (see README). The certificates, the tokens file
and the policy are re-read on SIGHUP and when they change. Without a
policy every caller is an admin: for development on loopback only.
Logs are JSON on stderr.

Tracing (OpenTelemetry) is off unless OTEL_TRACES_EXPORTER=otlp or an
OTEL_EXPORTER_OTLP_ENDPOINT is set; then spans of each call, rotation,
provider request and store call go to that OTLP endpoint (http/protobuf, or
grpc with OTEL_EXPORTER_OTLP_PROTOCOL=grpc), and log lines within a traced
call carry trace_id and span_id. The other OTEL_* variables (service name,
sampler, headers) apply as usual; OTEL_SDK_DISABLED=true turns it off.

SIGINT or SIGTERM stops it gracefully: calls in
flight get up to 30s, watch streams end with UNAVAILABLE (watchers resume
with their cursor), then the store is closed.

With --http-listen and --public-url the server also answers browsers: the
provider redirects to <public-url>/oauth/callback at the end of an
authorization-code flow started without --redirect-uri, and whichever
replica receives it completes the flow (pending flows live in the store).

Examples:
  rotavault store generate-key --out /etc/rotavault/store.key
  rotavault serve --addr 127.0.0.1:7443 --data-dir /var/lib/rotavault \
      --store-key-file /etc/rotavault/store.key

  ROTAVAULT_SERVER_DATA_DIR=/var/lib/rotavault ROTAVAULT_SERVER_STORE_KEY="$(cat key.b64)" rotavault serve
  rotavault serve --config /etc/rotavault/rotavault.yaml

Settings come from flags, then ROTAVAULT_SERVER_<FLAG> variables
(--tls-cert is ROTAVAULT_SERVER_TLS_CERT), then the --config file (YAML,
keys are the flag names with _ for -), then the defaults.`,
		Args: args(cobra.NoArgs),
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			if dataDir == "" {
				return usageErrorf("--data-dir is required (or set %s, or data_dir in --config)", serverEnvName("data-dir"))
			}
			scfg := serverConfig{
				Addr: addr, AllowNonLoopback: insecure,
				TLSCert: tlsCert, TLSKey: tlsKey, TLSClientCA: tlsClientCA,
				BearerTokensFile: bearerTokens, PolicyFile: policyFile,
				RateLimit:           server.RateLimit{Rate: rateLimit, Burst: rateBurst, Disabled: rateLimit < 0},
				AuditAnchorInterval: syncAnchorIfZero(auditAnchorInterval),
				AuditWitness:        auditWitness, AcceptMissingAuditAnchor: acceptMissingAnchor,
			}
			if err := scfg.checkAuth(); err != nil {
				return err
			}
			if err := checkListenAddr(addr, scfg.allowNonLoopback()); err != nil {
				return err
			}
			if err := hardenProcess(); err != nil {
				// Not fatal: the key is still unset from the environment.
				fmt.Fprintf(a.stderr, "WARNING: could not make the process non-dumpable: %v\n", err)
			}
			var key boltstore.Key
			var previous []boltstore.Key
			if backend != backendVault {
				var err error
				if key, previous, err = keys.load(a); err != nil {
					return err
				}
			}
			vaultLogin, err := vaultAuth.loginMethod()
			if err != nil {
				return err
			}
			log, err := logs.logger(a.stderr)
			if err != nil {
				return err
			}
			if insecure && (tlsCert == "" || policyFile == "") {
				if err := checkListenAddr(addr, false); err != nil {
					fmt.Fprintf(a.stderr, "WARNING: --%s is set: serving on %s without TLS and a policy. Anyone who reaches it can take access tokens and change credentials.\n", insecureListenFlag, addr)
				}
			}
			scfg.DataDir, scfg.Key, scfg.PreviousKeys, scfg.Reflection, scfg.Logger = dataDir, key, previous, reflection, log
			scfg.Backend, scfg.VaultMount, scfg.VaultPrefix, scfg.VaultLogin = backend, vaultMount, vaultPrefix, vaultLogin
			scfg.VaultTransitKey, scfg.VaultTransitMount, scfg.VaultAddrs = transitKey, transitMount, vaultAddrs
			scfg.BrokerOptions = []option.Option{option.WithClaimTiming(claimTTL, claimMargin), option.WithNoticePollInterval(noticePoll), option.WithNoticeRecords(noticeRecords), option.WithIntrospectionInterval(introspection), option.WithRejectionInterval(rejectedInterval)}
			dutyOpts, err := duties.options()
			if err != nil {
				return err
			}
			scfg.BrokerOptions = append(scfg.BrokerOptions, dutyOpts...)
			scfg.MaxConnectionAge = maxConnAge
			if shutdownDelay < 0 {
				return usageErrorf("--shutdown-delay must not be negative")
			}
			scfg.ShutdownDelay = shutdownDelay
			scfg.HTTPListen, scfg.PublicURL = httpListen, publicURL
			if issuanceFlush < minIssuanceFlush {
				return usageErrorf("--%s must be at least %s", issuanceFlushFlag, minIssuanceFlush)
			}
			scfg.IssuanceFlushInterval = issuanceFlush
			if logSlowCall <= 0 {
				return usageErrorf("--log-slow-call must be positive")
			}
			scfg.LogSlowCall = logSlowCall
			scfg.Limits, scfg.CallbackTrustedProxies = limits.limits(), limits.callbackTrustedProxies
			// Last before runServer, which shuts it down: it may start an
			// exporter.
			if scfg.Tracing, err = tracing.FromEnv(cmd.Context(), a.env); err != nil {
				return usageErrorf("%v", err)
			}
			scfg.Logger = scfg.Tracing.Logger(scfg.Logger)
			return runServer(cmd.Context(), scfg)
		}),
	}
	fs := cmd.Flags()
	fs.StringVar(&addr, "addr", defaultServer, "address to listen on (loopback only, unless TLS and a policy are configured)")
	fs.StringVar(&tlsCert, "tls-cert", "", "server certificate (PEM); re-read on SIGHUP and when it changes")
	fs.StringVar(&tlsKey, "tls-key", "", "server private key (PEM), with --tls-cert")
	fs.StringVar(&tlsClientCA, "tls-client-ca", "", "CA bundle (PEM) verifying client certificates: enables mTLS; the caller's identity is the certificate's URI SAN (SPIFFE ID), else dns:<first DNS SAN>, else cn:<subject CN>")
	fs.StringVar(&bearerTokens, "bearer-tokens", "", "file of lines '<identity> <sha256-hex-of-token>' accepting 'authorization: Bearer <token>' (over TLS, or from loopback)")
	fs.StringVar(&policyFile, "policy", "", "JSON policy mapping caller identities to roles (consumer, operator, admin) on credentials; without it every caller is an admin (dev only)")
	fs.StringVar(&dataDir, "data-dir", "", "directory of the store and the audit trail (required)")
	fs.Float64Var(&rateLimit, "rate-limit", server.DefaultRateLimit, "requests per second each caller identity may send, sustained (health checks excepted); over it calls get RESOURCE_EXHAUSTED with a retry delay; -1 disables")
	fs.DurationVar(&auditAnchorInterval, "audit-anchor-interval", audit.DefaultAnchorInterval, "how often, at most, the audit chain's head is anchored in the store, in the background: records newer than the last anchor can be cut off undetected; 0 anchors every record before the action completes (one more store write per rotation)")
	fs.StringVar(&auditWitness, "audit-witness", "", "file to append every anchored audit head to, as a signed line: keep it where whoever can write the data directory cannot rewrite it (another host's mount, a log shipper's input); rotavault audit verify --witness then detects a store rolled back to a backup")
	fs.BoolVar(&acceptMissingAnchor, acceptMissingAnchorFlag, false, "start although the store's audit head record is missing (deleted): the trail's chain must still hold; the acceptance is recorded in the trail. Use once, after checking the trail")
	fs.IntVar(&rateBurst, "rate-burst", server.DefaultRateBurst, "requests a caller identity may send at once before --rate-limit applies")
	fs.DurationVar(&issuanceFlush, issuanceFlushFlag, server.DefaultIssuanceFlushInterval, "how often the access tokens handed out, counted in memory per caller and credential, are summarised into the audit trail and new consumers merged into the consumer catalog (rotavault consumers; known consumers' counts every ten intervals; on Vault written to this replica's inboxes and merged by the replica holding each credential's duty shard at its own flush, so within two intervals); also at shutdown. Nothing is written per call")
	keys.register(fs)
	fs.StringVar(&httpListen, "http-listen", "", "address of the HTTP endpoints — the OAuth callback /oauth/callback, Prometheus /metrics, liveness /healthz, readiness /readyz (the store is reachable) — host:port; off when empty. Plaintext: off loopback, put a TLS-terminating proxy in front")
	fs.StringVar(&publicURL, "public-url", "", "how browsers reach the HTTP endpoints (https, or http on loopback): <public-url>/oauth/callback is the redirect URI of 'reauth start' without --redirect-uri; register it with each provider app")
	fs.BoolVar(&reflection, "reflection", false, "serve gRPC reflection (for grpcurl)")
	fs.DurationVar(&introspection, "introspection-interval", detect.DefaultIntrospectionInterval, "how often each active family's refresh token is introspected at its provider (where the credential has an introspection URL) to detect a revocation there without spending a rotation; replicas sharing a store split the families (--duty-lease-period), so the provider sees credentials / interval calls however many replicas run; 0 turns it off. At generic providers a verdict needs the family's access token, known alive at the provider, to be inactive too, so a family nobody fetched a token for lately is not checked: 'credentials show' says per credential whether early detection is active and why not")
	fs.DurationVar(&rejectedInterval, "rejected-token-interval", 30*time.Second, "least time between two refreshes caused by consumers reporting a rejected access token, per credential (reports the provider disproves wait 1s only)")
	fs.BoolVar(&noticeRecords, "notice-records", false, "also write each notice of the shared notice log as a record of its own, as replicas of versions before 2026-12-06 read it: set it on the new replicas of a rolling upgrade from such a version until no old replica runs (two store writes more per notice; see docs/operations.md)")
	fs.DurationVar(&noticePoll, "notice-poll-interval", 500*time.Millisecond, "how often this replica reads the shared notice log for revocations and activations other replicas announced: the bound on how late they reach this replica's watchers (one store read each, whatever the number of credentials)")
	fs.DurationVar(&shutdownDelay, "shutdown-delay", 0, "on SIGTERM/SIGINT, report NOT_SERVING (gRPC health Check and Watch, HTTP /readyz) and go on serving for this long before ending watch streams and refusing new calls, so that load balancers and Kubernetes endpoints take the replica out first: set it to their health-check period or more (the Helm chart uses 5s). The graceful stop's 30s come after it")
	fs.DurationVar(&maxConnAge, "max-connection-age", server.DefaultMaxConnectionAge, "end each client connection after this long (watch streams end with UNAVAILABLE and resume with their cursor, possibly on another replica); -1s never")
	fs.DurationVar(&claimTTL, "refresh-claim-ttl", 45*time.Second, "how long a replica's claim on a refresh lasts before another may take it over (see docs/rotation-protocol.md); a credential with a reuse grace period is claimed for at most its grace period minus 2s, so a takeover re-presents the token inside it")
	fs.DurationVar(&claimMargin, "refresh-claim-margin", 15*time.Second, "how long before its claim ends a replica's provider calls must finish: the bound on process pauses plus clock skew between replicas; every credential's reuse grace period must be 0 or at least this + 5s (a stored credential with a shorter one is logged at ERROR and neither refreshed nor served)")
	fs.StringVar(&backend, "store", backendEmbedded, "where records live: embedded (an encrypted file under --data-dir) or vault (HashiCorp Vault KV v2; VAULT_ADDR, VAULT_TOKEN, VAULT_CACERT… from the environment)")
	fs.StringSliceVar(&vaultAddrs, "vault-addr", nil, "Vault node address, http(s)://host:port, with --store vault (repeatable or comma-separated; default VAULT_ADDR): give every node of a cluster and each request goes to a node that can take it, moving on when one is down, sealed or in an election")
	fs.StringVar(&vaultMount, "vault-mount", vaultstore.DefaultMount, "KV v2 mount path, with --store vault")
	vaultAuth.register(fs)
	fs.StringVar(&transitKey, "vault-transit-key", "", "envelope-encrypt every record with data keys wrapped by this Transit key (then reading tokens takes decrypt rights too, not just KV read)")
	fs.StringVar(&transitMount, "vault-transit-mount", "transit", "Transit engine mount path, with --vault-transit-key")
	fs.StringVar(&vaultPrefix, "vault-prefix", vaultstore.DefaultPrefix, "path under the mount holding Rotavault's records, with --store vault")
	fs.BoolVar(&insecure, insecureListenFlag, false, "allow a non-loopback --addr without TLS and a policy: anyone who reaches it can take tokens")
	fs.BoolVar(&insecure, oldInsecureListenFlag, false, "old name of --"+insecureListenFlag)
	_ = fs.MarkDeprecated(oldInsecureListenFlag, "use --"+insecureListenFlag)
	logs.register(fs, "info")
	fs.DurationVar(&logSlowCall, "log-slow-call", server.DefaultLogSlowCall, "a routine read (GetAccessToken, GetCredential, the lists, server status, health checks) that succeeds faster than this is logged at debug only, and counted in the metrics; slower ones, errors (those of routine reads at most once a second per method and code) and every call that changes state are logged at info")
	limits.register(fs)
	duties.register(fs)
	fs.String(configFlag, "", "YAML file of serve's settings (keys: the flag names with _ for -; see deploy/rotavault.yaml); flags and ROTAVAULT_SERVER_* variables override it")
	// Every other flag of serve, including those added later, is read from
	// ROTAVAULT_SERVER_<FLAG>. Listening in plaintext off loopback must be
	// asked for on the command line or in the config file, where a
	// reviewer sees it, not inherited from an environment.
	markSettings(cmd, serverEnvPrefix)
	bindEnv(fs, insecureListenFlag, "")
	bindEnv(fs, oldInsecureListenFlag, "")
	// Accepting a deleted audit head is decided once, after checking the
	// trail: never from a file or an environment that outlives the decision.
	commandLineOnly(fs, acceptMissingAnchorFlag)
	return cmd
}

// vaultAuthFlags choose how the server logs in to Vault.
type vaultAuthFlags struct {
	kind, mount                 string
	roleID, secretIDFile        string
	kubernetesRole, saTokenFile string
}

func (f *vaultAuthFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.kind, "vault-auth", "token", "how to log in to Vault: token (VAULT_TOKEN), approle or kubernetes; the token is renewed, and replaced by a fresh login when it expires or is revoked")
	fs.StringVar(&f.mount, "vault-auth-mount", "", "auth method mount path (default: approle or kubernetes)")
	fs.StringVar(&f.roleID, "vault-approle-role-id", "", "AppRole role id, with --vault-auth approle")
	fs.StringVar(&f.secretIDFile, "vault-approle-secret-id-file", "", "file holding the AppRole secret id (re-read at every login), with --vault-auth approle")
	fs.StringVar(&f.kubernetesRole, "vault-kubernetes-role", "", "Vault role, with --vault-auth kubernetes")
	fs.StringVar(&f.saTokenFile, "vault-kubernetes-token-file", "", "service-account token file (default: the pod's; re-read at every login, as the kubelet rotates it), with --vault-auth kubernetes")
}

func (f *vaultAuthFlags) loginMethod() (vaultstore.LoginMethod, error) {
	switch f.kind {
	case "", "token":
		return nil, nil
	case "approle":
		if f.roleID == "" || f.secretIDFile == "" {
			return nil, usageErrorf("--vault-auth approle needs --vault-approle-role-id and --vault-approle-secret-id-file")
		}
		return vaultstore.AppRole(f.roleID, f.secretIDFile, f.mount)
	case "kubernetes":
		if f.kubernetesRole == "" {
			return nil, usageErrorf("--vault-auth kubernetes needs --vault-kubernetes-role")
		}
		return vaultstore.Kubernetes(f.kubernetesRole, f.saTokenFile, f.mount)
	default:
		return nil, usageErrorf("unknown --vault-auth %q: token, approle or kubernetes", f.kind)
	}
}

// syncAnchorIfZero maps --audit-anchor-interval 0 ("anchor every record")
// to audit's negative interval, whose zero means "the default".
func syncAnchorIfZero(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}
