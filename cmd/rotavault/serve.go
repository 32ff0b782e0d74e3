package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/boltstore"
	"github.com/rotavault/rotavault/broker"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/server"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/vaultstore"
)

const (
	storeFileName          = "rotavault.db"
	auditFileName          = "audit.jsonl"
	defaultShutdownTimeout = 30 * time.Second
	insecureListenFlag     = "insecure-listen-on-non-loopback-i-know-what-i-am-doing"
	backendEmbedded        = "embedded"
	backendVault           = "vault"
)

// serverConfig is everything runServer wires together.
type serverConfig struct {
	// Addr is where to listen, host:port; port 0 picks a free port.
	Addr string
	// AllowNonLoopback permits a non-loopback Addr. The transport is
	// plaintext for now, so that exposes tokens to the network.
	AllowNonLoopback bool
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
	// VaultLogin logs in to Vault (AppRole, Kubernetes); nil uses VAULT_TOKEN.
	VaultLogin vaultstore.LoginMethod
	// VaultTransitKey envelope-encrypts records with this Transit key.
	VaultTransitKey, VaultTransitMount string
	Reflection                         bool
	Logger                             *slog.Logger // nil: discard
	// ShutdownTimeout bounds the graceful stop (default 30s); then
	// remaining calls are cut off.
	ShutdownTimeout time.Duration
	BrokerOptions   []broker.Option
	// Ready, if set, is called once the server accepts connections. An
	// error stops the server, and runServer returns it.
	Ready func(ctx context.Context, s *runningServer) error
}

// runningServer is what Ready learns about the server.
type runningServer struct {
	Addr   net.Addr
	Broker *broker.Broker
}

// runServer opens the store and the audit trail, builds the broker and the
// gRPC server, serves until ctx ends, then shuts down in order: gRPC
// (gracefully, bounded by ShutdownTimeout), the broker, the audit trail and
// the store. A refused address is a *usageError; ctx ending is not an
// error.
func runServer(ctx context.Context, cfg serverConfig) (err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := checkListenAddr(cfg.Addr, cfg.AllowNonLoopback); err != nil {
		return err
	}
	if cfg.DataDir == "" {
		return usageErrorf("a data directory is required (--data-dir or ROTAVAULT_DATA_DIR)")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	var st store.Store
	switch cfg.Backend {
	case "", backendEmbedded:
		bs, err := openStore(cfg.DataDir, cfg.Key, boltstore.Options{PreviousKeys: cfg.PreviousKeys, Logger: log})
		if err != nil {
			return err
		}
		defer closeLogged(log, "store", bs.Close)
		st = bs
	case backendVault:
		vs, err := vaultstore.New(ctx, vaultstore.Config{Mount: cfg.VaultMount, Prefix: cfg.VaultPrefix, Login: cfg.VaultLogin,
			TransitKey: cfg.VaultTransitKey, TransitMount: cfg.VaultTransitMount, Logger: log})
		if err != nil {
			return err
		}
		defer closeLogged(log, "store", vs.Close)
		st = vs
	default:
		return usageErrorf("unknown --store %q: embedded or vault", cfg.Backend)
	}
	al, err := audit.OpenFile(filepath.Join(cfg.DataDir, auditFileName))
	if err != nil {
		return err
	}
	defer closeLogged(log, "audit trail", al.Close)
	b, err := broker.New(ctx, broker.Config{Store: st, Provider: provider.New(nil), Auditor: al},
		append([]broker.Option{broker.WithLogger(log)}, cfg.BrokerOptions...)...)
	if err != nil {
		return err
	}
	defer closeLogged(log, "broker", b.Close)

	srv := server.New(server.Config{Broker: b, Logger: log, Reflection: cfg.Reflection})
	lis, err := net.Listen("tcp", cfg.Addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return withHint(fmt.Errorf("listen: %w", err), "another server (rotavault serve or dev?) is using %s; stop it or choose another --addr", cfg.Addr)
	}
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if err := checkBoundAddr(lis.Addr(), cfg.AllowNonLoopback); err != nil {
		_ = lis.Close()
		return err
	}
	if !isLoopbackAddr(lis.Addr()) {
		log.Warn("LISTENING ON A NON-LOOPBACK ADDRESS WITHOUT TRANSPORT SECURITY: anyone who reaches it can take access tokens and change credentials",
			"addr", lis.Addr().String())
	}
	served := make(chan error, 1)
	go func() { served <- srv.GRPC.Serve(lis) }()
	log.Info("rotavault serving", "addr", lis.Addr().String(), "data_dir", cfg.DataDir, "store_key_id", cfg.Key.ID())

	// stop runs once, on every way out: ctx ending, Serve failing, Ready
	// failing.
	stop := func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout(cfg.ShutdownTimeout))
		defer cancel()
		srv.Shutdown(sctx)
	}
	if cfg.Ready != nil {
		if err := cfg.Ready(ctx, &runningServer{Addr: lis.Addr(), Broker: b}); err != nil {
			stop()
			<-served
			return err
		}
	}
	select {
	case <-ctx.Done():
		log.Info("shutting down")
		stop()
		<-served
		return nil
	case err := <-served:
		stop()
		return fmt.Errorf("serve: %w", err)
	}
}

func shutdownTimeout(d time.Duration) time.Duration {
	if d <= 0 {
		return defaultShutdownTimeout
	}
	return d
}

func closeLogged(log *slog.Logger, what string, closeFn func() error) {
	if err := closeFn(); err != nil {
		log.Error("close failed", "what", what, "err", err)
	}
}

// openStore opens DIR/rotavault.db, explaining a held lock.
func openStore(dataDir string, key boltstore.Key, opts boltstore.Options) (*boltstore.Store, error) {
	path := filepath.Join(dataDir, storeFileName)
	st, err := boltstore.Open(path, key, opts)
	switch {
	case errors.Is(err, boltstore.ErrLocked):
		return nil, fmt.Errorf("the store %s is in use by a running server; stop it first: %w", path, err)
	case errors.Is(err, boltstore.ErrUnknownKey):
		return nil, fmt.Errorf("the store %s is sealed under another key: give its key with --store-key-file (and older ones with --store-previous-key-file): %w", path, err)
	case err != nil:
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return st, nil
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
	return usageErrorf("refusing to listen on %s: not a loopback address. The server speaks plaintext gRPC for now, so anyone who reaches it can take access tokens and change credentials. Listen on 127.0.0.1 (behind a TLS proxy on the same host), or pass --%s if you really mean it", addr, insecureListenFlag)
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
		vaultAuth                        vaultAuthFlags
		claimTTL, claimMargin            time.Duration
		transitKey, transitMount         string
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the Rotavault server",
		Long: `Run the Rotavault gRPC server: TokenVaultService, CredentialAdminService,
the standard health service and, with --reflection, server reflection.

State lives in the data directory: rotavault.db (the embedded store, every
value sealed with AES-256-GCM under the store key) and audit.jsonl (the
audit trail). The store key comes from --store-key-file (a file only its
owner may read) or from ROTAVAULT_STORE_KEY (the base64 key itself). After
` + "`rotavault store rotate-key`" + `, point --store-key-file at the new key.

The server listens on loopback only: it speaks plaintext gRPC for now.
Logs are JSON on stderr. SIGINT or SIGTERM stops it gracefully: calls in
flight get up to 30s, watch streams end with UNAVAILABLE (watchers resume
with their cursor), then the store is closed.

Examples:
  rotavault store generate-key --out /etc/rotavault/store.key
  rotavault serve --addr 127.0.0.1:7443 --data-dir /var/lib/rotavault \
      --store-key-file /etc/rotavault/store.key

  ROTAVAULT_DATA_DIR=/var/lib/rotavault ROTAVAULT_STORE_KEY="$(cat key.b64)" rotavault serve`,
		Args: args(cobra.NoArgs),
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			if dataDir == "" {
				return usageErrorf("--data-dir is required (or set ROTAVAULT_DATA_DIR)")
			}
			if err := checkListenAddr(addr, insecure); err != nil {
				return err
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
			if insecure {
				if err := checkListenAddr(addr, false); err != nil {
					fmt.Fprintf(a.stderr, "WARNING: --%s is set: serving plaintext gRPC on %s. Anyone who reaches it can take access tokens and change credentials.\n", insecureListenFlag, addr)
				}
			}
			return runServer(cmd.Context(), serverConfig{
				Addr: addr, AllowNonLoopback: insecure, DataDir: dataDir,
				Key: key, PreviousKeys: previous, Reflection: reflection, Logger: log,
				Backend: backend, VaultMount: vaultMount, VaultPrefix: vaultPrefix, VaultLogin: vaultLogin,
				VaultTransitKey: transitKey, VaultTransitMount: transitMount,
				BrokerOptions: []broker.Option{broker.WithClaimTiming(claimTTL, claimMargin)},
			})
		}),
	}
	fs := cmd.Flags()
	fs.StringVar(&addr, "addr", defaultServer, "address to listen on (loopback only)")
	fs.StringVar(&dataDir, "data-dir", "", "directory of the store and the audit trail (required)")
	keys.register(fs)
	fs.BoolVar(&reflection, "reflection", false, "serve gRPC reflection (for grpcurl)")
	fs.DurationVar(&claimTTL, "refresh-claim-ttl", 45*time.Second, "how long a replica's claim on a refresh lasts before another may take it over (see docs/rotation-protocol.md); keep it below the provider's reuse grace period where it has one")
	fs.DurationVar(&claimMargin, "refresh-claim-margin", 15*time.Second, "how long before its claim ends a replica's provider calls must finish: the bound on process pauses plus clock skew between replicas")
	fs.StringVar(&backend, "store", backendEmbedded, "where records live: embedded (an encrypted file under --data-dir) or vault (HashiCorp Vault KV v2; VAULT_ADDR, VAULT_TOKEN, VAULT_CACERT… from the environment)")
	fs.StringVar(&vaultMount, "vault-mount", vaultstore.DefaultMount, "KV v2 mount path, with --store vault")
	vaultAuth.register(fs)
	fs.StringVar(&transitKey, "vault-transit-key", "", "envelope-encrypt every record with data keys wrapped by this Transit key (then reading tokens takes decrypt rights too, not just KV read)")
	fs.StringVar(&transitMount, "vault-transit-mount", "transit", "Transit engine mount path, with --vault-transit-key")
	fs.StringVar(&vaultPrefix, "vault-prefix", vaultstore.DefaultPrefix, "path under the mount holding Rotavault's records, with --store vault")
	fs.BoolVar(&insecure, insecureListenFlag, false, "allow a non-loopback --addr although the transport is plaintext")
	logs.register(fs)
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
	fs.StringVar(&f.saTokenFile, "vault-kubernetes-token-file", "", "service-account token file (default: the pod's), with --vault-auth kubernetes")
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
