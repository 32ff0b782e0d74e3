// Package vaulttest starts real HashiCorp Vault servers on loopback for
// tests. The binary is built by scripts/vault from the pinned tools module;
// a test that needs Vault fails (never skips) when it is missing.
package vaulttest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/rotavault/rotavault/vaultstore"
)

// BinaryEnv names the environment variable that points at the vault binary.
const BinaryEnv = "ROTAVAULT_VAULT_BIN"

const startTimeout = 60 * time.Second

// Binary returns the vault binary's path: $ROTAVAULT_VAULT_BIN, else the
// cache scripts/vault builds into.
func Binary() (string, error) {
	if p := os.Getenv(BinaryEnv); p != "" {
		return p, nil
	}
	mod, err := os.ReadFile(filepath.Join(repoRoot(), "tools", "vault", "go.mod"))
	if err != nil {
		return "", fmt.Errorf("vaulttest: read tools/vault/go.mod: %w", err)
	}
	var version string
	for _, line := range strings.Split(string(mod), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "github.com/hashicorp/vault" {
			version = f[1]
		}
	}
	cache := os.Getenv("ROTAVAULT_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", err
		}
		cache = filepath.Join(home, ".cache", "rotavault")
	}
	p := filepath.Join(cache, "vault-"+version, "vault")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("vaulttest: no vault binary at %s: run scripts/vault (scripts/test does) or set %s", p, BinaryEnv)
	}
	return p, nil
}

// repoRoot is the repository's root directory (this file is two levels
// below it).
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Server is a running Vault server, provisioned as an operator would for
// Rotavault: the policies of deploy/vault-policy.hcl and
// deploy/vault-policy-transit.hcl written as PolicyName and
// TransitPolicyName, secret/ configured to require check-and-set on every
// key, the Transit engine at transit/ with the key TransitKey,
// and a token for each variant that carries only its policies (not even
// Vault's "default" policy). Client and TransitClient use those tokens, so
// every Vault-backed test proves that the policy files are enough.
type Server struct {
	Addr      string // http://127.0.0.1:PORT
	RootToken string
	// Token carries only PolicyName; TransitToken carries PolicyName and
	// TransitPolicyName.
	Token, TransitToken string

	cmd    *exec.Cmd
	exited chan struct{}
	logs   *tail // the last lines the running process printed

	t    testing.TB
	args []string // how launch starts (and Restart restarts) the process

	caCert    string // TLS dev servers only
	unsealKey string // persistent servers only
}

// vaultEnviron is the test's environment without GODEBUG: a test re-run
// under GODEBUG=fips140=only checks Rotavault's own cryptography; the Vault
// server is another product with its own FIPS build (Vault Enterprise), and
// the open-source one panics in that mode (SHA-1 key ids in -dev-tls).
func vaultEnviron() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") {
			env = append(env, kv)
		}
	}
	return env
}

// StartDev starts `vault server -dev` on a free loopback port (in-memory
// storage, unsealed, KV v2 at secret/) and stops it when the test ends.
func StartDev(t testing.TB) *Server {
	t.Helper()
	return startDev(t, "")
}

// StartDevTLS starts a dev server that serves HTTPS with a generated CA, and
// returns it with the CA certificate's path (what VAULT_CACERT names).
func StartDevTLS(t testing.TB) (*Server, string) {
	t.Helper()
	s := startDev(t, t.TempDir())
	return s, s.caCert
}

func startDev(t testing.TB, tlsDir string) *Server {
	addr := freeAddr(t)
	token := randomToken()
	s := &Server{Addr: "http://" + addr, RootToken: token, t: t}
	s.args = []string{"server", "-dev", "-dev-listen-address=" + addr, "-dev-root-token-id=" + token, "-dev-no-store-token"}
	if tlsDir != "" {
		s.Addr = "https://" + addr
		s.caCert = filepath.Join(tlsDir, "vault-ca.pem")
		s.args = append(s.args, "-dev-tls", "-dev-tls-cert-dir="+tlsDir, "-dev-tls-san=127.0.0.1")
	}
	s.launch("HOME=" + t.TempDir())
	t.Cleanup(s.Stop)
	if err := s.awaitReady(); err != nil {
		t.Fatalf("vaulttest: %v\nvault output:\n%s", err, s.logs)
	}
	s.provision(t)
	return s
}

// Stop kills the server and waits for it. A persistent server keeps its
// storage.
func (s *Server) Stop() {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
	}
	<-s.exited
}

// Client returns a client authenticated with Token: what Rotavault's store
// is given, limited to deploy/vault-policy.hcl.
func (s *Server) Client(t testing.TB) *vault.Client {
	t.Helper()
	return s.clientWith(t, s.Token)
}

// TransitClient returns a client authenticated with TransitToken, for a
// store with a Transit key.
func (s *Server) TransitClient(t testing.TB) *vault.Client {
	t.Helper()
	return s.clientWith(t, s.TransitToken)
}

// RootClient returns a client authenticated with the root token, for what
// an operator does (mounts, policies, auth methods) and for looking at
// Vault behind the store's back.
func (s *Server) RootClient(t testing.TB) *vault.Client {
	t.Helper()
	return s.clientWith(t, s.RootToken)
}

func (s *Server) clientWith(t testing.TB, token string) *vault.Client {
	t.Helper()
	c, err := s.newClient()
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(token)
	return c
}

func (s *Server) newClient() (*vault.Client, error) {
	cfg := vaultstore.ClientConfig()
	cfg.Address = s.Addr
	cfg.MaxRetries = 0
	if s.caCert != "" {
		if err := cfg.ConfigureTLS(&vault.TLSConfig{CACert: s.caCert}); err != nil {
			return nil, err
		}
	}
	c, err := vault.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	c.SetToken(s.RootToken)
	return c, nil
}

func (s *Server) awaitReady() error {
	return s.poll("unsealed and ready", func(ctx context.Context) error {
		// A TLS dev server writes its CA only once it runs: build the client
		// on every attempt.
		c, err := s.newClient()
		if err != nil {
			return err
		}
		h, err := c.Sys().HealthWithContext(ctx)
		if err == nil && (!h.Initialized || h.Sealed) {
			err = fmt.Errorf("initialized=%v sealed=%v", h.Initialized, h.Sealed)
		}
		return err
	})
}

// poll calls try every 50ms until it succeeds, the process exits or
// startTimeout passes.
func (s *Server) poll(what string, try func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := try(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("vaulttest: vault exited before it was %s", what)
		case <-ctx.Done():
			return fmt.Errorf("vaulttest: vault not %s within %s: %v", what, startTimeout, err)
		case <-tick.C:
		}
	}
}

func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return "root-" + hex.EncodeToString(b)
}

// tail keeps the last lines a server printed, for failure messages.
type tail struct {
	mu    sync.Mutex
	lines []string
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	sc := bufio.NewScanner(strings.NewReader(string(p)))
	for sc.Scan() {
		t.lines = append(t.lines, sc.Text())
		if len(t.lines) > 50 {
			t.lines = t.lines[1:]
		}
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}

// StartPersistent starts a Vault server with file storage on a free loopback
// port, initialises it (one unseal key), unseals it and enables KV v2 at
// secret/. Restart stops and starts it on the same port and storage.
func StartPersistent(t testing.TB) *Server {
	t.Helper()
	dir := t.TempDir()
	addr := freeAddr(t)
	config := filepath.Join(dir, "vault.hcl")
	hcl := fmt.Sprintf(`storage "file" { path = %q }
listener "tcp" {
  address     = %q
  tls_disable = true
}
disable_mlock = true
api_addr      = "http://%s"
`, filepath.Join(dir, "data"), addr, addr)
	if err := os.WriteFile(config, []byte(hcl), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &Server{Addr: "http://" + addr, t: t, args: []string{"server", "-config=" + config}}
	s.launch()
	t.Cleanup(s.Stop)
	c, err := s.newClient()
	if err != nil {
		t.Fatal(err)
	}
	c.ClearToken()
	if err := s.awaitUp(c); err != nil {
		t.Fatal(err)
	}
	init, err := c.Sys().Init(&vault.InitRequest{SecretShares: 1, SecretThreshold: 1})
	if err != nil {
		t.Fatalf("vaulttest: init: %v", err)
	}
	s.RootToken, s.unsealKey = init.RootToken, init.Keys[0]
	s.unseal()
	c.SetToken(s.RootToken)
	if err := c.Sys().Mount("secret", &vault.MountInput{Type: "kv", Options: map[string]string{"version": "2"}}); err != nil {
		t.Fatalf("vaulttest: enable kv-v2: %v", err)
	}
	s.awaitKVWrites(t, c)
	s.provision(t)
	return s
}

// awaitKVWrites waits until secret/ serves writes: KV v2 upgrades its
// storage in the background after mounting.
func (s *Server) awaitKVWrites(t testing.TB, root *vault.Client) {
	t.Helper()
	if err := s.poll("serving KV v2 writes", func(ctx context.Context) error {
		_, err := root.KVv2("secret").Put(ctx, "vaulttest/ready", map[string]any{"ok": true})
		return err
	}); err != nil {
		t.Fatalf("%v\nvault output:\n%s", err, s.logs)
	}
}

// Restart kills the server (SIGKILL, as a crash would), starts it again on
// the same port and storage, and unseals it.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.launch()
	s.unseal()
}

// launch starts the process with s.args and the test's environment (minus
// GODEBUG) plus env.
func (s *Server) launch(env ...string) {
	bin, err := Binary()
	if err != nil {
		s.t.Fatal(err)
	}
	exited := make(chan struct{})
	cmd := exec.Command(bin, s.args...)
	cmd.Env = append(append(vaultEnviron(), "VAULT_LOG_LEVEL=warn"), env...)
	s.logs = &tail{}
	cmd.Stdout, cmd.Stderr = s.logs, s.logs
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("vaulttest: start vault: %v", err)
	}
	s.cmd, s.exited = cmd, exited
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
}

func (s *Server) unseal() {
	c, err := s.newClient()
	if err != nil {
		s.t.Fatal(err)
	}
	if err := s.awaitUp(c); err != nil {
		s.t.Fatal(err)
	}
	if _, err := c.Sys().Unseal(s.unsealKey); err != nil {
		s.t.Fatalf("vaulttest: unseal: %v", err)
	}
	if err := s.awaitReady(); err != nil {
		s.t.Fatal(err)
	}
}

// awaitUp waits until the server answers at all (sealed or not).
func (s *Server) awaitUp(c *vault.Client) error {
	return s.poll("answering", func(ctx context.Context) error {
		_, err := c.Sys().SealStatusWithContext(ctx)
		return err
	})
}

// AppRole enables AppRole auth and a role whose tokens carry only
// PolicyName and live tokenTTL, at most tokenMaxTTL ("" = Vault's
// defaults). It returns the role id and a file (mode 0600) holding a fresh
// secret id, which is how a server is given one.
func (s *Server) AppRole(t testing.TB, tokenTTL, tokenMaxTTL string) (roleID, secretIDFile string) {
	t.Helper()
	root := s.RootClient(t)
	if err := root.Sys().EnableAuthWithOptions("approle", &vault.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatal(err)
	}
	writeRole(t, root, "auth/approle/role/rotavault", map[string]any{}, tokenTTL, tokenMaxTTL)
	id, err := root.Logical().Read("auth/approle/role/rotavault/role-id")
	if err != nil {
		t.Fatal(err)
	}
	secretID, err := root.Logical().Write("auth/approle/role/rotavault/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	secretIDFile = filepath.Join(t.TempDir(), "secret-id")
	if err := os.WriteFile(secretIDFile, []byte(secretID.Data["secret_id"].(string)), 0o600); err != nil {
		t.Fatal(err)
	}
	return id.Data["role_id"].(string), secretIDFile
}

// CPUTime is the CPU time (user + system) the Vault process has used so far,
// read from /proc (Linux only). Benchmarks use it to tell how much of the
// machine Vault got in each phase.
func (s *Server) CPUTime() (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: state is field 3, utime and stime are fields 14 and 15.
	rest := string(raw)
	if i := strings.LastIndexByte(rest, ')'); i >= 0 {
		rest = rest[i+1:]
	}
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0, fmt.Errorf("vaulttest: unexpected /proc stat: %q", raw)
	}
	var utime, stime int64
	if _, err := fmt.Sscan(f[11], &utime); err != nil {
		return 0, err
	}
	if _, err := fmt.Sscan(f[12], &stime); err != nil {
		return 0, err
	}
	const clockTicksPerSecond = 100 // USER_HZ on every Linux architecture Go supports
	return time.Duration(utime+stime) * time.Second / clockTicksPerSecond, nil
}

// writeRole writes an auth method's role at path with params, its tokens
// carrying only PolicyName (not Vault's default policy) and living
// tokenTTL, at most tokenMaxTTL ("" = Vault's defaults).
func writeRole(t testing.TB, root *vault.Client, path string, params map[string]any, tokenTTL, tokenMaxTTL string) {
	t.Helper()
	params["token_policies"] = PolicyName
	params["token_no_default_policy"] = true
	if tokenTTL != "" {
		params["token_ttl"] = tokenTTL
	}
	if tokenMaxTTL != "" {
		params["token_max_ttl"] = tokenMaxTTL
	}
	if _, err := root.Logical().Write(path, params); err != nil {
		t.Fatal(err)
	}
}
