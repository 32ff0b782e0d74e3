package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/providersim"
)

// agentDeadline bounds a wait that includes a rotation: tokens live 10 s
// (the shortest lifetime a credential may declare), replaced at a quarter
// of that before expiry.
const agentDeadline = 20 * time.Second

// agentSetup starts the simulator and a server, and installs Salesforce
// credentials whose access tokens live 10 s.
type agentSetup struct {
	c    *cli
	sim  *providersim.Server
	node *testNode
	dir  string
}

func newAgentSetup(t *testing.T, ids ...string) *agentSetup {
	t.Helper()
	return newAgentSetupLifetime(t, "10s", ids...)
}

// newAgentSetupLifetime is newAgentSetup with tokens living lifetime.
func newAgentSetupLifetime(t *testing.T, lifetime string, ids ...string) *agentSetup {
	t.Helper()
	s := &agentSetup{sim: startSim(t), dir: t.TempDir()}
	keyFile, _ := newKeyFile(t, s.dir, "store.key")
	s.c = newCLI(t, nil)
	s.node = startNode(t, s.dir, keyFile, s.c.trans)
	s.c.env = map[string]string{"ROTAVAULT_ADDR": s.node.addr}
	t.Cleanup(func() { s.c.trans.assertNoSecrets(t, simClientSecret) })
	for _, id := range ids {
		s.c.run(simClientSecret+"\n", "credentials", "put", id, "--provider", "salesforce", "--base-url", s.sim.URL(),
			"--client-id", simClientID, "--client-secret-file", "-", "--scope", "api refresh_token",
			"--access-token-lifetime", lifetime).expect(t, exitOK)
		s.importFamily(t, id)
	}
	return s
}

func (s *agentSetup) importFamily(t *testing.T, id string) {
	t.Helper()
	s.c.run(issueRefreshToken(t, s.sim)+"\n", "reauth", "import", id, "--refresh-token-file", "-").expect(t, exitOK)
}

// sinkReader reads a sink file without pause while the agent rewrites it,
// and records every content it saw; a content that is not a whole token
// the provider issued is a torn write.
type sinkReader struct {
	mu   sync.Mutex
	seen []string
	bad  []string
	stop chan struct{}
	done chan struct{}
}

func readSinkConcurrently(t *testing.T, sim *providersim.Server, path string) *sinkReader {
	r := &sinkReader{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		issued := sim.Secrets()
		for {
			select {
			case <-r.stop:
				return
			default:
			}
			b, err := os.ReadFile(path)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				r.record("", "read error: "+err.Error())
				continue
			}
			got := string(b)
			if !slices.Contains(issued, got) {
				issued = sim.Secrets()
			}
			if !slices.Contains(issued, got) {
				r.record("", fmt.Sprintf("not an issued token: %d bytes", len(got)))
				continue
			}
			r.record(got, "")
		}
	}()
	t.Cleanup(r.end)
	return r
}

func (r *sinkReader) record(seen, bad string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if bad != "" {
		r.bad = append(r.bad, bad)
	} else if len(r.seen) == 0 || r.seen[len(r.seen)-1] != seen {
		r.seen = append(r.seen, seen)
	}
}

func (r *sinkReader) end() {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	<-r.done
}

// fileGone waits until path does not exist.
func fileGone(t *testing.T, path, what string) {
	t.Helper()
	poll.Until(t, agentDeadline, what, func() bool {
		_, err := os.Stat(path)
		return errors.Is(err, fs.ErrNotExist)
	})
}

// fileToken waits until path holds an access token the provider issued
// other than those in old, and returns it.
func (s *agentSetup) fileToken(t *testing.T, path, what string, old ...string) string {
	t.Helper()
	var tok string
	poll.UntilSeen(t, agentDeadline, what, func() (bool, string) {
		b, err := os.ReadFile(path)
		if err != nil {
			return false, err.Error()
		}
		tok = string(b)
		switch {
		case slices.Contains(old, tok):
			return false, "a token it held before"
		case !slices.Contains(s.sim.Secrets(), tok):
			return false, fmt.Sprintf("%d bytes that are no token the provider issued", len(b))
		}
		return true, ""
	})
	return tok
}

// TestAgentKeepsTokenFiles runs `rotavault agent` with two sinks given
// through ROTAVAULT_AGENT_SINK: each file holds its credential's current
// token (0600), is replaced before the token expires without a reader
// ever seeing half a file, disappears when the family is revoked and comes
// back after reauthentication, across a restart of the agent (which missed
// a revocation meanwhile) and of the server.
func TestAgentKeepsTokenFiles(t *testing.T) {
	s := newAgentSetup(t, "acme", "billing")
	out := t.TempDir()
	acmeFile, billingFile := filepath.Join(out, "acme.token"), filepath.Join(out, "billing.token")
	env := map[string]string{"ROTAVAULT_AGENT_SINK": "acme=" + acmeFile + ",billing=" + billingFile}
	agent := s.c.start(env, "agent")

	first := s.fileToken(t, acmeFile, "acme's token in its file")
	s.fileToken(t, billingFile, "billing's token in its file")
	if mode := fileMode(t, acmeFile); mode != 0o600 {
		t.Errorf("sink file mode %o, want 600", mode)
	}

	reader := readSinkConcurrently(t, s.sim, acmeFile)
	var rotated string
	t.Run("rotation replaces the file whole", func(t *testing.T) {
		rotated = s.fileToken(t, acmeFile, "a rotated token in acme's file", first)
		agent.stderr.WaitFor(t, "acme: generation 2 ", awaitDeadline)
	})

	t.Run("revocation removes the file, reauthentication restores it", func(t *testing.T) {
		s.c.run("", "credentials", "revoke", "acme", "--reason", "agent test", "--yes").expect(t, exitOK)
		fileGone(t, acmeFile, "acme's file removed after FAMILY_REVOKED")
		agent.stderr.WaitFor(t, "acme: reauthentication required: removed the token", awaitDeadline)
		s.importFamily(t, "acme")
		s.fileToken(t, acmeFile, "acme's file rewritten after FAMILY_ACTIVATED", first, rotated)
	})
	reader.end()
	if len(reader.bad) > 0 {
		t.Errorf("a concurrent reader saw %d contents that were not whole tokens: %q", len(reader.bad), reader.bad[0])
	}
	// The reader must have watched the file change at least once, or its
	// finding nothing half-written proves nothing. It may miss one of the
	// three tokens when the machine is loaded (a busy loop is not
	// scheduled at every instant); the subtests above saw each of them.
	if len(reader.seen) < 2 {
		t.Errorf("the concurrent reader saw %d distinct tokens; want it to see the file replaced at least once", len(reader.seen))
	}

	t.Run("a restarted agent removes a file its family lost meanwhile", func(t *testing.T) {
		if code := agent.stop(t); code != exitOK {
			t.Fatalf("interrupted agent exited %d:\n%s", code, agent.stderr.String())
		}
		before := string(readFile(t, acmeFile))
		s.c.run("", "credentials", "revoke", "acme", "--reason", "while the agent was down", "--yes").expect(t, exitOK)
		agent = s.c.start(env, "agent")
		fileGone(t, acmeFile, "the stale file removed at start")
		s.importFamily(t, "acme")
		s.fileToken(t, acmeFile, "acme's file after reauthentication", before)
	})

	t.Run("a server restart changes nothing; its notices still arrive", func(t *testing.T) {
		addr := s.node.addr
		s.node.stop(t)
		s.node = startNode(t, s.dir, s.node.keyFile, s.c.trans, func(cfg *serverConfig) { cfg.Addr = addr })
		s.c.run("", "credentials", "revoke", "billing", "--reason", "after a restart", "--yes").expect(t, exitOK)
		fileGone(t, billingFile, "billing's file removed after a revocation following the server's restart")
		if _, err := os.Stat(acmeFile); err != nil {
			t.Errorf("acme's file is gone after the server restarted: %v", err)
		}
	})

	t.Run("a token that expires while the server is away is removed, then restored", func(t *testing.T) {
		before := string(readFile(t, acmeFile))
		addr := s.node.addr
		s.node.stop(t)
		fileGone(t, acmeFile, "acme's file removed when its token reached its use-until time with no server to ask")
		agent.stderr.WaitFor(t, "acme: the token reached its use-until time without a new one", awaitDeadline)
		s.node = startNode(t, s.dir, s.node.keyFile, s.c.trans, func(cfg *serverConfig) { cfg.Addr = addr })
		s.fileToken(t, acmeFile, "acme's file once the server is back", before)
	})
	if code := agent.stop(t); code != exitOK {
		t.Errorf("interrupted agent exited %d:\n%s", code, agent.stderr.String())
	}
	for _, tok := range s.sim.Secrets() {
		if strings.Contains(agent.stderr.String(), tok) {
			t.Error("the agent's log shows a token")
		}
	}
}

// TestAgentExecRestartsTheCommand runs a command under `agent --exec`: it
// gets the token in its environment, is stopped when the family is
// revoked, and runs again with the new family's token after
// reauthentication; when it exits by itself the agent exits with its
// status.
func TestAgentExecRestartsTheCommand(t *testing.T) {
	// Tokens living a minute: no rotation restarts the command during the
	// test (the agent replaces a token at its use-until time, 50 s in).
	s := newAgentSetupLifetime(t, "1m", "acme")
	out := t.TempDir()
	// Each run records its token in a file named after its pid, then
	// waits to be stopped.
	script := `printf %s "$ROTAVAULT_ACCESS_TOKEN" > "$0/run.$$.tmp" && mv "$0/run.$$.tmp" "$0/run.$$"; exec sleep 300`
	// --refresh-before 0s: no rotation restarts the command during the test.
	agent := s.c.start(nil, "agent", "--exec", "acme", "--refresh-before", "0s", "--", "sh", "-c", script, out)
	runs := func() []string {
		names, _ := filepath.Glob(filepath.Join(out, "run.*[0-9]"))
		var toks []string
		for _, n := range names {
			toks = append(toks, string(readFile(t, n)))
		}
		return toks
	}
	poll.Until(t, agentDeadline, "the command's first run", func() bool { return len(runs()) == 1 })
	first := runs()[0]
	if !slices.Contains(s.sim.Secrets(), first) {
		t.Fatal("the command's ROTAVAULT_ACCESS_TOKEN is no token the provider issued")
	}

	s.c.run("", "credentials", "revoke", "acme", "--reason", "agent exec test", "--yes").expect(t, exitOK)
	agent.stderr.WaitFor(t, "acme: the token changed: stopping sh", awaitDeadline)
	s.importFamily(t, "acme")
	poll.Until(t, agentDeadline, "the command's second run", func() bool { return len(runs()) == 2 })
	if r := runs(); r[0] == r[1] {
		t.Error("the restarted command got the revoked family's token")
	}
	if strings.Count(agent.stderr.String(), "acme: started sh") != 2 {
		t.Errorf("want two starts of the command:\n%s", agent.stderr.String())
	}
	if code := agent.stop(t); code != exitOK {
		t.Errorf("interrupted agent exited %d:\n%s", code, agent.stderr.String())
	}

	t.Run("the agent exits with the command's status", func(t *testing.T) {
		r := s.c.run("", "agent", "--exec", "acme", "--", "sh", "-c", "exit 42")
		if r.code != 42 || !strings.Contains(r.stderr, "sh exited with status 42") {
			t.Errorf("agent exited %d, want 42:\n%s", r.code, r.stderr)
		}
	})

	t.Run("a command that ignores the stop signal is killed", func(t *testing.T) {
		dir := t.TempDir()
		stubborn := `trap "" TERM; printf '%s %s' "$ROTAVAULT_INSTANCE_URL" "$ROTAVAULT_TOKEN_EXPIRY" > "$0/env"; while :; do sleep 1; done`
		a := s.c.start(nil, "agent", "--exec", "acme", "--exec-stop-timeout", "200ms", "--", "sh", "-c", stubborn, dir)
		a.stderr.WaitFor(t, "acme: started sh", awaitDeadline)
		poll.Until(t, agentDeadline, "the command's environment file", func() bool {
			_, err := os.Stat(filepath.Join(dir, "env"))
			return err == nil
		})
		env := strings.Fields(string(readFile(t, filepath.Join(dir, "env"))))
		if len(env) != 2 || env[0] != s.sim.URL() {
			t.Errorf("ROTAVAULT_INSTANCE_URL and ROTAVAULT_TOKEN_EXPIRY = %q; want the simulator's URL and a time", env)
		} else if _, err := time.Parse(time.RFC3339, env[1]); err != nil {
			t.Errorf("ROTAVAULT_TOKEN_EXPIRY: %v", err)
		}
		s.c.run("", "credentials", "revoke", "acme", "--reason", "stubborn command", "--yes").expect(t, exitOK)
		a.stderr.WaitFor(t, "did not exit within 200ms: killing it", awaitDeadline)
		s.importFamily(t, "acme")
		poll.UntilSeen(t, agentDeadline, "the command started again after reauthentication", func() (bool, string) {
			out := a.stderr.String()
			return strings.Count(out, "acme: started sh") == 2, out
		})
		a.stop(t)
	})

	t.Run("misuse", func(t *testing.T) {
		for _, argv := range [][]string{
			{"agent"},
			{"agent", "--exec", "acme"},
			{"agent", "--sink", "acme"},
			{"agent", "--sink", "acme=x", "--", "sh"},
			{"agent", "--exec", "acme", "--exec-stop-signal", "USR9", "--", "sh"},
		} {
			s.c.run("", argv...).expect(t, exitUsage)
		}
		s.c.run("", "agent", "--sink", "nosuch="+filepath.Join(out, "x")).expect(t, exitNotFound)
	})
}

// TestAgentRenewsAheadOfUseUntil: the server's use_until comes before the
// token's expiry (the broker stops serving a token its margin before
// expiry: 5 s of these 20 s tokens); the agent replaces a JSON sink
// --refresh-before ahead of it, so that a reader never finds a token past
// its useUntil. Judged by expiry alone, the 3 s margin would replace the
// file 2 s after useUntil.
func TestAgentRenewsAheadOfUseUntil(t *testing.T) {
	s := newAgentSetupLifetime(t, "20s", "acme")
	path := filepath.Join(t.TempDir(), "acme.json")
	agent := s.c.start(nil, "agent", "--sink", "acme="+path, "--sink-format", "json", "--refresh-before", "3s")

	var (
		mu      sync.Mutex
		late    []string // the first few
		lateN   int
		lastGen uint64
		checked int
		stop    = make(chan struct{})
		stopped = make(chan struct{})
	)
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			default:
			}
			b, err := os.ReadFile(path)
			now := time.Now()
			if err != nil || len(b) == 0 {
				continue
			}
			var tok rotavaultv1.GetAccessTokenResponse
			if err := protojson.Unmarshal(b, &tok); err != nil {
				continue // a file replaced between stat and read is whole, but may be gone
			}
			mu.Lock()
			checked++
			before := len(late)
			lastGen = max(lastGen, tok.GetGeneration())
			switch u := tok.GetUseUntil(); {
			case u == nil || u.AsTime().After(tok.GetExpireTime().AsTime()):
				late = append(late, fmt.Sprintf("generation %d: useUntil %v, expireTime %v", tok.GetGeneration(), u, tok.GetExpireTime()))
			case now.After(u.AsTime()):
				late = append(late, fmt.Sprintf("generation %d read %s after its useUntil", tok.GetGeneration(), now.Sub(u.AsTime()).Round(time.Millisecond)))
			}
			if len(late) > before {
				lateN++
				late = late[:min(len(late), 3)]
			}
			mu.Unlock()
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-stopped
	}()
	poll.UntilSeen(t, 2*agentDeadline, "the sink replaced by generation 3", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return lastGen >= 3, fmt.Sprintf("generation %d", lastGen)
	})
	close(stop)
	<-stopped
	if lateN > 0 || checked == 0 {
		t.Errorf("the sink held a token past its useUntil in %d of %d reads; the first: %q", lateN, checked, late)
	}
	if !strings.Contains(agent.stderr.String(), "use until ") {
		t.Errorf("the agent's log does not say the use-until time:\n%s", agent.stderr.String())
	}
}

// TestAgentExecKeepsItsOwnSettingsFromTheCommand: the command under
// --exec inherits the agent's environment without the agent's own
// ROTAVAULT_* settings — its server, certificates, bearer token file, agent
// settings, a store key — so it does not act with the agent's
// configuration and identity; it gets the token variables instead.
func TestAgentExecKeepsItsOwnSettingsFromTheCommand(t *testing.T) {
	s := newAgentSetup(t, "acme")
	agentEnv := map[string]string{
		"ROTAVAULT_ADDR":                 s.node.addr,
		"ROTAVAULT_CACERT":               "/etc/rotavault/agent-ca.pem",
		"ROTAVAULT_CLIENT_CERT":          "/etc/rotavault/agent.pem",
		"ROTAVAULT_CLIENT_KEY":           "/etc/rotavault/agent.key",
		"ROTAVAULT_TOKEN_FILE":           "/etc/rotavault/agent.token",
		"ROTAVAULT_CLIENT_TIMEOUT":       "10s",
		"ROTAVAULT_AGENT_REFRESH_BEFORE": "0s",
		"ROTAVAULT_SERVER_STORE_KEY":     "c2VjcmV0",
		"ROTAVAULT_ACCESS_TOKEN":         "an outer agent's token",
	}
	// The agent reads its settings from the environment it runs in; the
	// command inherits that environment.
	for k, v := range agentEnv {
		t.Setenv(k, v)
	}
	t.Setenv("APP_SETTING", "kept")
	out := t.TempDir()
	script := `env > "$0/env.tmp" && mv "$0/env.tmp" "$0/env"; exec sleep 300`
	agent := s.c.start(map[string]string{"ROTAVAULT_AGENT_REFRESH_BEFORE": "0s"}, "agent", "--exec", "acme", "--", "sh", "-c", script, out)
	envFile := filepath.Join(out, "env")
	poll.Until(t, agentDeadline, "the command's environment", func() bool {
		_, err := os.Stat(envFile)
		return err == nil
	})
	got := make(map[string]string)
	for _, line := range strings.Split(string(readFile(t, envFile)), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			got[k] = v
		}
	}
	for k := range got {
		if strings.HasPrefix(k, "ROTAVAULT_") && !slices.Contains(agentCommandEnv, k) {
			t.Errorf("the command inherited the agent's setting %s", k)
		}
	}
	if got["APP_SETTING"] != "kept" {
		t.Errorf("APP_SETTING = %q in the command's environment, want the inherited value", got["APP_SETTING"])
	}
	if tok := got["ROTAVAULT_ACCESS_TOKEN"]; !slices.Contains(s.sim.Secrets(), tok) {
		t.Error("the command's ROTAVAULT_ACCESS_TOKEN is not the token the agent got")
	}
	useUntil, err := time.Parse(time.RFC3339, got["ROTAVAULT_TOKEN_USE_UNTIL"])
	if err != nil {
		t.Fatalf("ROTAVAULT_TOKEN_USE_UNTIL: %v", err)
	}
	expiry, err := time.Parse(time.RFC3339, got["ROTAVAULT_TOKEN_EXPIRY"])
	if err != nil || useUntil.After(expiry) {
		t.Errorf("ROTAVAULT_TOKEN_USE_UNTIL %s, ROTAVAULT_TOKEN_EXPIRY %s (%v): want use-until at or before expiry", useUntil, expiry, err)
	}
	agent.stop(t)
}
