package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// startDev runs `rotavault dev` on a free port and returns the server's
// address once the demo credential is installed.
func startDev(t *testing.T, c *cli, dataDir string) (*background, string) {
	t.Helper()
	dev := c.start(nil, "dev", "--addr", "127.0.0.1:0", "--data-dir", dataDir)
	out := dev.stdout.WaitFor(t, "Logs follow on stderr", awaitDeadline)
	m := regexp.MustCompile(`export ROTAVAULT_ADDR=(\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("dev did not say where its server is:\n%s", out)
	}
	return dev, m[1]
}

// TestDev follows the newcomer's path: dev, token get, theft, the
// revocation surfacing, and a second run of dev recovering the credential.
func TestDev(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "dev")
	c := newCLI(t, nil)
	dev, addr := startDev(t, c, dataDir)
	c.env = map[string]string{"ROTAVAULT_ADDR": addr}
	if mode := fileMode(t, filepath.Join(dataDir, devKeyFileName)); mode != 0o600 {
		t.Errorf("dev store key mode %v, want 0600", mode)
	}

	tok := parseToken(t, c.run("", "token", "get", "demo", "--json").expect(t, exitOK).stdout)
	if tok.GetGeneration() < 1 {
		t.Fatalf("demo's generation is %d; want at least 1 after the import", tok.GetGeneration())
	}

	theft := c.run("", "dev", "theft", "--data-dir", dataDir).expect(t, exitOK)
	m := regexp.MustCompile(`--rejected-generation (\d+)`).FindStringSubmatch(theft.stdout)
	if m == nil {
		t.Fatalf("dev theft did not say how to surface the revocation:\n%s", theft.stdout)
	}
	if gen, _ := strconv.ParseUint(m[1], 10, 64); gen != tok.GetGeneration() {
		t.Errorf("dev theft names generation %d; the current one is %d", gen, tok.GetGeneration())
	}
	r := c.run("", "token", "get", "demo", "--rejected-generation", m[1]).expect(t, exitReauthRequired)
	if !strings.Contains(r.stderr, "reason REAUTHENTICATION_REQUIRED") {
		t.Errorf("after the theft, token get: %s", r.stderr)
	}
	if got := showCredential(t, c, "demo"); got.GetRevocationReason().String() != "REVOCATION_REASON_REVOKED_AT_PROVIDER" {
		// The report makes Rotavault introspect the refresh token: the
		// revocation is found without presenting it.
		t.Errorf("demo after the theft: %v", got)
	}
	r = c.run("", "dev", "theft", "--data-dir", dataDir).expect(t, exitError)
	if !strings.Contains(r.stderr, "no live token family") {
		t.Errorf("theft of a revoked family: %s", r.stderr)
	}

	// The banner stays on screen: after these calls, dev's terminal shows
	// no line per call, no JSON, and no second simulator URL.
	if logs := dev.stderr.String(); strings.Contains(logs, "level=INFO") || strings.Contains(logs, `{"time"`) || strings.Contains(logs, "providersim: started") {
		t.Errorf("dev logged more than warnings at its default level:\n%s", logs)
	}
	if n := len(regexp.MustCompile(`(?m)^\s+simulator\s+http://`).FindAllString(dev.stdout.String(), -1)); n != 1 {
		t.Errorf("dev's banner names a simulator %d times:\n%s", n, dev.stdout.String())
	}
	if code := dev.stop(t); code != exitOK {
		t.Fatalf("dev exited %d:\n%s", code, dev.stderr.String())
	}
	if _, err := os.Stat(filepath.Join(dataDir, devURLFileName)); err == nil {
		t.Error("dev left its URL file behind")
	}
	r = c.run("", "dev", "theft", "--data-dir", dataDir).expect(t, exitError)
	if !strings.Contains(r.stderr, "no running `rotavault dev`") {
		t.Errorf("theft without dev: %s", r.stderr)
	}

	t.Run("a second run recovers demo", func(t *testing.T) {
		dev, addr := startDev(t, c, dataDir)
		c.env = map[string]string{"ROTAVAULT_ADDR": addr}
		if got := showCredential(t, c, "demo"); got.GetStatus().String() != "CREDENTIAL_STATUS_ACTIVE" {
			t.Errorf("demo after restarting dev: %v", got)
		}
		dev.stop(t)
	})
}
