package server

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultReloadInterval is how often a Reloader looks for changed files.
const DefaultReloadInterval = 5 * time.Second

// ReloaderConfig names the files a Reloader keeps current. Every file is
// optional, but CertFile and KeyFile go together and ClientCAFile needs
// them.
type ReloaderConfig struct {
	PolicyFile string
	TokensFile string
	CertFile   string
	KeyFile    string
	// ClientCAFile enables mTLS: client certificates are verified against
	// it.
	ClientCAFile string
	// RequireClientCert refuses TLS connections without a client
	// certificate. Leave it false when bearer tokens are accepted too.
	RequireClientCert bool
	// Interval between looks for changed files; DefaultReloadInterval if 0.
	Interval time.Duration
	Logger   *slog.Logger // nil: discard
}

// Reloader holds the current policy, bearer tokens and TLS material, read
// from files, and swaps each atomically when its files change, so that
// calls in flight keep the generation they started with and no restart is
// needed. A file that fails to parse leaves the previous generation in
// place (and is logged).
type Reloader struct {
	cfg    ReloaderConfig
	log    *slog.Logger
	policy atomic.Pointer[Policy]
	tokens atomic.Pointer[TokenSet]
	tls    atomic.Pointer[tlsMaterial]

	// mu serialises reloads; digests are what each group's files held at
	// the last attempt, so an unchanged or still-broken file is not
	// re-parsed (or re-logged) at every tick.
	mu      sync.Mutex
	digests map[string][sha256.Size]byte
}

// NewReloader loads every configured file once; any failure is an error,
// since a server must not start without the policy it was given.
func NewReloader(cfg ReloaderConfig) (*Reloader, error) {
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("a server certificate needs both its certificate and its key file")
	}
	if cfg.ClientCAFile != "" && cfg.CertFile == "" {
		return nil, errors.New("a client CA (mTLS) needs a server certificate and key")
	}
	r := &Reloader{cfg: cfg, log: loggerOrDiscard(cfg.Logger), digests: make(map[string][sha256.Size]byte)}
	if _, err := r.reload(true); err != nil {
		return nil, err
	}
	return r, nil
}

// Policy returns the current policy; nil if none was configured.
func (r *Reloader) Policy() *Policy { return r.policy.Load() }

// VerifyToken checks a bearer token against the current tokens file.
func (r *Reloader) VerifyToken(token string) (string, bool) {
	return r.tokens.Load().VerifyToken(token)
}

// ClientCAs returns the client CAs in force now; nil without mTLS.
func (r *Reloader) ClientCAs() *x509.CertPool {
	m := r.tls.Load()
	if m == nil {
		return nil
	}
	return m.config.ClientCAs
}

// ServerTLSConfig returns the server's TLS config, which picks up the
// current certificate and client CA at every handshake; nil without a
// certificate.
func (r *Reloader) ServerTLSConfig() *tls.Config {
	if r.cfg.CertFile == "" {
		return nil
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return r.tls.Load().config, nil
		},
	}
}

// Run reloads when trigger fires (SIGHUP) and whenever a file's content
// changes, until ctx ends. The caller owns the goroutine running it.
func (r *Reloader) Run(ctx context.Context, trigger <-chan os.Signal) {
	interval := r.cfg.Interval
	if interval <= 0 {
		interval = DefaultReloadInterval
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		force := false
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-trigger:
			force = true
		}
		changed, err := r.reload(force)
		if err != nil {
			r.log.ErrorContext(ctx, "reload failed; keeping the previous configuration", "err", err)
		}
		if len(changed) > 0 {
			r.log.InfoContext(ctx, "reloaded", "what", changed)
		}
	}
}

// Reload re-reads every file now, as SIGHUP does.
func (r *Reloader) Reload() error {
	_, err := r.reload(true)
	return err
}

// reload re-reads each group of files whose content changed (every group
// if force) and swaps in what parses. It returns the groups swapped.
func (r *Reloader) reload(force bool) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var (
		changed []string
		errs    []error
	)
	group := func(name string, files []string, load func() error) {
		d, err := digestFiles(files)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			return
		}
		if prev, ok := r.digests[name]; ok && prev == d && !force {
			return
		}
		r.digests[name] = d
		if err := load(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			return
		}
		changed = append(changed, name)
	}
	if f := r.cfg.PolicyFile; f != "" {
		group("policy", []string{f}, func() error {
			p, err := LoadPolicyFile(f)
			if err == nil {
				r.policy.Store(p)
			}
			return err
		})
	}
	if f := r.cfg.TokensFile; f != "" {
		group("bearer tokens", []string{f}, func() error {
			ts, err := LoadTokensFile(f)
			if err == nil {
				r.tokens.Store(ts)
			}
			return err
		})
	}
	if r.cfg.CertFile != "" {
		files := []string{r.cfg.CertFile, r.cfg.KeyFile}
		if r.cfg.ClientCAFile != "" {
			files = append(files, r.cfg.ClientCAFile)
		}
		group("tls", files, func() error {
			m, err := loadTLSMaterial(r.cfg.CertFile, r.cfg.KeyFile, r.cfg.ClientCAFile, r.cfg.RequireClientCert)
			if err == nil {
				r.tls.Store(m)
			}
			return err
		})
	}
	return changed, errors.Join(errs...)
}

// digestFiles hashes the files' contents together. Content, not mtime:
// Kubernetes swaps secret volumes by symlink, and editors may keep the
// mtime's second.
func digestFiles(paths []string) ([sha256.Size]byte, error) {
	h := sha256.New()
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return [sha256.Size]byte{}, fmt.Errorf("read: %w", err)
		}
		s := sha256.Sum256(data)
		h.Write(s[:])
	}
	var d [sha256.Size]byte
	copy(d[:], h.Sum(nil))
	return d, nil
}
