package main

import (
	"bufio"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/server"
)

// flowDeadline bounds waits for a flow's end through the CLI: one device
// poll interval plus the long poll's answer, generously.
const flowDeadline = 30 * time.Second

// setupReauthTest starts a simulator whose device flows poll every second
// and a server with its own OAuth callback, and returns a CLI pointed at it.
func setupReauthTest(t *testing.T) (*cli, *providersim.Server) {
	t.Helper()
	sim, err := providersim.Start(providersim.Config{DeviceInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	publicURL := "http://" + httpLis.Addr().String()
	sim.AddClient(providersim.Client{ID: simClientID, Secret: simClientSecret, RedirectURIs: []string{publicURL + server.CallbackPath}, RequirePKCE: true})

	dir := t.TempDir()
	keyFile, _ := newKeyFile(t, dir, "store.key")
	c := newCLI(t, nil)
	addr := startNodeWith(t, dir, keyFile, c.trans, func(cfg *serverConfig) {
		cfg.HTTPListener, cfg.PublicURL = httpLis, publicURL
	}).addr
	c.env = map[string]string{"ROTAVAULT_ADDR": addr}
	// Device codes, authorization codes, verifiers, tokens: none may show
	// in any output or log.
	t.Cleanup(func() { c.trans.assertNoSecrets(t, append(sim.Secrets(), simClientSecret)...) })
	c.run(simClientSecret+"\n", "credentials", "put", "acme", "--provider", "salesforce", "--base-url", sim.URL(),
		"--client-id", simClientID, "--client-secret-file", "-", "--scope", "api refresh_token").expect(t, exitOK)
	return c, sim
}

// exited waits for a background command to end on its own and returns its
// exit code.
func (bg *background) exited(t *testing.T) int {
	t.Helper()
	select {
	case code := <-bg.done:
		close(bg.done) // stop, at cleanup, then finds it ended
		return code
	case <-time.After(flowDeadline):
		t.Fatalf("command still running after %s; stderr:\n%s", flowDeadline, bg.stderr.String())
		return -1
	}
}

var userCodeRE = regexp.MustCompile(`and enter the code\s+(\S+)`)

// userCode reads the code the person must enter from what the command
// showed on stderr.
func (bg *background) userCode(t *testing.T) string {
	t.Helper()
	out := bg.stderr.WaitFor(t, "Waiting stops with Ctrl-C", awaitDeadline)
	m := userCodeRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("reauth device showed no user code:\n%s", out)
	}
	return m[1]
}

// The device flow from the command line: the code and URL for the person
// on stderr, the wait, the activation on stdout, then tokens flow.
func TestReauthDeviceCommand(t *testing.T) {
	c, sim := setupReauthTest(t)
	bg := c.start(nil, "reauth", "device", "acme")
	code := bg.userCode(t)
	if !strings.Contains(bg.stderr.String(), sim.URL()+providersim.VerificationPath) {
		t.Errorf("reauth device did not show the verification URL:\n%s", bg.stderr.String())
	}
	if err := sim.ApproveDevice(code); err != nil {
		t.Fatal(err)
	}
	if exit := bg.exited(t); exit != exitOK {
		t.Fatalf("reauth device exited %d:\n%s", exit, bg.stderr.String())
	}
	if !strings.Contains(bg.stdout.String(), "acme: new token family active") || strings.Contains(bg.stdout.String(), code) {
		t.Fatalf("stdout after approval (the user code belongs on stderr only):\n%s", bg.stdout.String())
	}
	// --json shows the access token, by design: read it outside the
	// transcript the leak check searches.
	shown := newCLI(t, c.env)
	tok := parseToken(t, shown.run("", "token", "get", "acme", "--json").expect(t, exitOK).stdout)
	if !sim.AccessTokenActive(tok.GetAccessToken()) {
		t.Fatal("the token after the device flow is not live at the provider")
	}

	t.Run("json for scripts", func(t *testing.T) {
		bg := c.start(nil, "reauth", "device", "acme", "--json")
		if err := sim.ApproveDevice(bg.userCode(t)); err != nil {
			t.Fatal(err)
		}
		if exit := bg.exited(t); exit != exitOK {
			t.Fatalf("exit %d:\n%s", exit, bg.stderr.String())
		}
		var lines []*rotavaultv1.ReauthenticateResponse
		sc := bufio.NewScanner(strings.NewReader(bg.stdout.String()))
		for sc.Scan() {
			var r rotavaultv1.ReauthenticateResponse
			if err := protojson.Unmarshal(sc.Bytes(), &r); err != nil {
				t.Fatalf("stdout line %q: %v", sc.Text(), err)
			}
			lines = append(lines, &r)
		}
		if len(lines) != 2 || lines[0].GetDeviceAuthorizationPending().GetUserCode() == "" || lines[1].GetFamilyActivated().GetFamilyId() == "" {
			t.Fatalf("--json printed %v; want the pending flow, then the activation", lines)
		}
	})

	t.Run("denied", func(t *testing.T) {
		bg := c.start(nil, "reauth", "device", "acme")
		if err := sim.DenyDevice(bg.userCode(t)); err != nil {
			t.Fatal(err)
		}
		if exit := bg.exited(t); exit != exitError {
			t.Fatalf("exit %d after a denial, want %d", exit, exitError)
		}
		if !strings.Contains(bg.stderr.String(), "reason AUTHORIZATION_DENIED") || !strings.Contains(bg.stderr.String(), "hint:") {
			t.Fatalf("stderr after a denial:\n%s", bg.stderr.String())
		}
	})

	t.Run("scopes without refresh token", func(t *testing.T) {
		r := c.run("", "reauth", "device", "acme", "--scope", "api").expect(t, exitUsage)
		if !strings.Contains(r.stderr, "INVALID_ARGUMENT") || !strings.Contains(r.stderr, "refresh_token") {
			t.Fatalf("stderr: %s", r.stderr)
		}
	})
}

// reauth start without --redirect-uri uses the server's callback, and
// --wait waits until the browser's redirect reached it.
func TestReauthStartWithServerCallback(t *testing.T) {
	c, _ := setupReauthTest(t)
	bg := c.start(nil, "reauth", "start", "acme", "--wait")
	out := bg.stdout.WaitFor(t, "redirect", awaitDeadline)
	m := regexp.MustCompile(`(?m)^\s+(http://\S+/services/oauth2/authorize\S+)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("reauth start printed no authorize URL:\n%s", out)
	}
	// The person's browser: the simulator approves and redirects to the
	// server's callback, which answers with its page.
	resp, err := http.Get(m[1])
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != server.CallbackPath {
		t.Fatalf("the browser ended at %s with %s, want the callback's 200", resp.Request.URL.Path, resp.Status)
	}
	if exit := bg.exited(t); exit != exitOK {
		t.Fatalf("reauth start --wait exited %d:\n%s", exit, bg.stderr.String())
	}
	if !strings.Contains(bg.stdout.String(), "acme: new token family active") {
		t.Fatalf("stdout:\n%s", bg.stdout.String())
	}
	c.run("", "token", "get", "acme").expect(t, exitOK)
}

// A server without a public URL has no callback: the CLI says what to do.
func TestReauthStartWithoutCallback(t *testing.T) {
	c, _, _ := setupCLITest(t)
	c.run(simClientSecret+"\n", "credentials", "put", "acme", "--provider", "salesforce", "--base-url", "http://127.0.0.1:1",
		"--client-id", simClientID, "--client-secret-file", "-", "--scope", "api refresh_token").expect(t, exitOK)
	r := c.run("", "reauth", "start", "acme").expect(t, exitError)
	if !strings.Contains(r.stderr, "reason CALLBACK_NOT_CONFIGURED") || !strings.Contains(r.stderr, "--public-url") {
		t.Fatalf("stderr: %s", r.stderr)
	}
}
