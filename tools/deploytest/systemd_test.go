package deploytest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// securityThreshold is the highest overall exposure systemd-analyze security
// may report for the unit. It counts in tenths of the level it prints: 20 is
// "2.0" (systemd 252 takes an integer).
const securityThreshold = "20"

// TestSystemdUnit checks deploy/rotavault.service with systemd-analyze
// (installed by scripts/deploy-deps): verify finds no error, and the
// sandboxing leaves an exposure of at most 2.0. Every flag ExecStart
// passes exists in `rotavault serve`.
func TestSystemdUnit(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze is missing: run scripts/deploy-deps (Debian's systemd package)")
	}
	unit := string(readRepoFile(t, "deploy/rotavault.service"))
	execStart := regexp.MustCompile(`(?m)^ExecStart=(\S+)((?:.*\\\n)*.*)$`).FindStringSubmatch(unit)
	if execStart == nil {
		t.Fatal("no ExecStart in the unit")
	}
	// verify wants ExecStart's binary to exist: the unit is checked with
	// the path of one built now, and nothing else changed.
	dir := t.TempDir()
	bin := buildRotavault(t, dir)
	path := filepath.Join(dir, "rotavault.service")
	if err := os.WriteFile(path, []byte(strings.Replace(unit, "ExecStart="+execStart[1], "ExecStart="+bin, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(analyze, "verify", path).CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err := exec.Command(analyze, "security", "--offline=true", "--threshold="+securityThreshold, path).CombinedOutput()
	if err != nil {
		t.Errorf("systemd-analyze security --threshold=%s: %v\n%s", securityThreshold, err, out)
	}
	if level := regexp.MustCompile(`Overall exposure level for \S+: (\S+)`).FindSubmatch(out); level != nil {
		t.Logf("overall exposure level %s", level[1])
	}
	checkServeFlags(t, bin, strings.Fields(strings.ReplaceAll(execStart[2], "\\\n", " ")))
}

// buildRotavault builds cmd/rotavault into dir, static and with -trimpath
// like the Dockerfile: the packages compiled for TestImage's build (in
// another directory, which -trimpath leaves out of the cache keys) are
// reused.
func buildRotavault(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "rotavault")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "./cmd/rotavault")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// checkServeFlags fails t when args (a serve command line) name a flag
// `rotavault serve` does not have.
func checkServeFlags(t *testing.T, bin string, args []string) {
	t.Helper()
	help, err := exec.Command(bin, "serve", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("serve --help: %v\n%s", err, help)
	}
	for _, a := range args {
		if a == "serve" || !strings.HasPrefix(a, "--") {
			continue
		}
		name, _, _ := strings.Cut(a, "=")
		if !regexp.MustCompile(`(?m)^\s+(-\w, )?` + regexp.QuoteMeta(name) + `\b`).Match(help) {
			t.Errorf("serve has no flag %s", name)
		}
	}
}
