package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rotavault/rotavault/boltstore"
	"github.com/rotavault/rotavault/internal/syncbuf"
	"github.com/rotavault/rotavault/providersim"
)

const (
	simClientID = "3MVG9-cli-test"
	// simClientSecret is recognisable, so the transcript check finds it.
	simClientSecret = "cli-test-client-secret-8d1f0b"
	// awaitDeadline bounds every wait for an asynchronous outcome.
	awaitDeadline = 10 * time.Second
)

// transcript collects everything every command printed, and the servers'
// logs, to check that no secret ever shows.
type transcript struct {
	mu   sync.Mutex
	outs []*syncbuf.Buffer
}

func (tr *transcript) add(b *syncbuf.Buffer) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.outs = append(tr.outs, b)
}

// assertNoSecrets fails if any of secrets appears anywhere in the
// transcript.
func (tr *transcript) assertNoSecrets(t *testing.T, secrets ...string) {
	t.Helper()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, b := range tr.outs {
		out := b.String()
		for _, s := range secrets {
			if s != "" && strings.Contains(out, s) {
				t.Errorf("a secret (%d bytes, starting %.4q) appears in command output or logs", len(s), s)
			}
		}
	}
}

// cli runs commands in-process, as a person at a shell would.
type cli struct {
	t     *testing.T
	env   map[string]string
	trans *transcript
}

type result struct {
	stdout, stderr string
	code           int
}

func newCLI(t *testing.T, env map[string]string) *cli {
	return &cli{t: t, env: env, trans: &transcript{}}
}

// run executes one command line with stdin and extra environment.
func (c *cli) run(stdin string, args ...string) result {
	c.t.Helper()
	return c.runEnv(nil, stdin, args...)
}

func (c *cli) runEnv(extraEnv map[string]string, stdin string, args ...string) result {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, errOut := &syncbuf.Buffer{}, &syncbuf.Buffer{}
	code := execute(ctx, newRootCmd(strings.NewReader(stdin), out, errOut, c.envFunc(extraEnv)), args, errOut)
	c.trans.add(out)
	c.trans.add(errOut)
	return result{stdout: out.String(), stderr: errOut.String(), code: code}
}

func (c *cli) envFunc(extra map[string]string) func(string) string {
	return func(k string) string {
		if v, ok := extra[k]; ok {
			return v
		}
		return c.env[k]
	}
}

// background runs a long-lived command (watch, serve, dev) until its
// context ends; wait returns its exit code.
type background struct {
	stdout, stderr *syncbuf.Buffer
	cancel         context.CancelFunc
	done           chan int
}

func (c *cli) start(extraEnv map[string]string, args ...string) *background {
	ctx, cancel := context.WithCancel(context.Background())
	bg := &background{stdout: &syncbuf.Buffer{}, stderr: &syncbuf.Buffer{}, cancel: cancel, done: make(chan int, 1)}
	c.trans.add(bg.stdout)
	c.trans.add(bg.stderr)
	root := newRootCmd(strings.NewReader(""), bg.stdout, bg.stderr, c.envFunc(extraEnv))
	go func() { bg.done <- execute(ctx, root, args, bg.stderr) }()
	c.t.Cleanup(func() { bg.stop(c.t) })
	return bg
}

// stop ends the command and returns its exit code.
func (bg *background) stop(t *testing.T) int {
	t.Helper()
	bg.cancel()
	select {
	case code, ok := <-bg.done:
		if ok {
			close(bg.done)
		}
		return code
	case <-time.After(awaitDeadline):
		t.Fatalf("command did not stop within %s; stderr:\n%s", awaitDeadline, bg.stderr.String())
		return -1
	}
}

func (r result) expect(t *testing.T, code int) result {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
	return r
}

// testNode is a Rotavault server started with runServer.
type testNode struct {
	addr    string
	dataDir string
	keyFile string
	logs    *syncbuf.Buffer
	cancel  context.CancelFunc
	done    chan error
}

// newKeyFile creates a store key file in dir.
func newKeyFile(t *testing.T, dir, name string) (string, boltstore.Key) {
	t.Helper()
	path := filepath.Join(dir, name)
	key, err := boltstore.GenerateKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, key
}

// newKeyFileText creates a store key file in dir and returns its path and
// the key as ROTAVAULT_SERVER_STORE_KEY holds it.
func newKeyFileText(t *testing.T, dir string) (path, text string) {
	t.Helper()
	path, _ = newKeyFile(t, dir, "store.key")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, strings.TrimSpace(string(raw))
}

// startNode serves dataDir on a free loopback port and waits until it
// accepts connections; opts adjust the server's configuration.
func startNode(t *testing.T, dataDir, keyFile string, trans *transcript, opts ...func(*serverConfig)) *testNode {
	t.Helper()
	return startNodeWith(t, dataDir, keyFile, trans, func(cfg *serverConfig) {
		for _, o := range opts {
			o(cfg)
		}
	})
}

// startNodeWith is startNode with configure adjusting the server's
// configuration first.
func startNodeWith(t *testing.T, dataDir, keyFile string, trans *transcript, configure func(*serverConfig)) *testNode {
	t.Helper()
	key, err := boltstore.LoadKeyFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	n := &testNode{dataDir: dataDir, keyFile: keyFile, logs: &syncbuf.Buffer{}, done: make(chan error, 1)}
	if trans != nil {
		trans.add(n.logs)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	ready := make(chan string, 1)
	cfg := serverConfig{
		Addr: "127.0.0.1:0", DataDir: dataDir, Key: key,
		Logger:          slog.New(slog.NewJSONHandler(n.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		ShutdownTimeout: 5 * time.Second,
		Ready: func(_ context.Context, s *runningServer) error {
			ready <- s.Addr.String()
			return nil
		},
	}
	if configure != nil {
		configure(&cfg)
	}
	go func() { n.done <- runServer(ctx, cfg) }()
	select {
	case n.addr = <-ready:
	case err := <-n.done:
		cancel()
		t.Fatalf("server did not start: %v", err)
	case <-time.After(awaitDeadline):
		cancel()
		t.Fatal("server did not become ready")
	}
	t.Cleanup(func() { n.stop(t) })
	return n
}

// stop shuts the server down and checks that it stopped cleanly.
func (n *testNode) stop(t *testing.T) {
	t.Helper()
	stopServer(t, n.cancel, &n.done)
}

// stopServer cancels a runServer started with cancel and reporting on
// *done, waits for it and checks that it stopped cleanly; *done is nil
// afterwards, and a nil *done means nothing runs.
func stopServer(t testing.TB, cancel func(), done *chan error) {
	t.Helper()
	if *done == nil {
		return
	}
	cancel()
	select {
	case err := <-*done:
		if err != nil {
			t.Errorf("server stopped with %v", err)
		}
	case <-time.After(awaitDeadline):
		t.Fatal("server did not stop")
	}
	*done = nil
}

func startSim(t *testing.T) *providersim.Server {
	t.Helper()
	sim, err := providersim.Start(providersim.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	sim.AddClient(providersim.Client{ID: simClientID, Secret: simClientSecret, RedirectURIs: []string{"http://127.0.0.1:1/callback"}, RequirePKCE: true})
	return sim
}

func issueRefreshToken(t *testing.T, sim *providersim.Server) string {
	t.Helper()
	rt, err := sim.IssueRefreshToken(simClientID, nil)
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func isUsage(err error) bool {
	var u *usageError
	return errors.As(err, &u)
}
