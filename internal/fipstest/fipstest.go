// Package fipstest re-runs a package's tests in Go's FIPS 140-3 "only" mode
// (GODEBUG=fips140=only), where any non-approved algorithm fails, unlike
// "on". A package using it defines
//
//	func TestFIPS140Only(t *testing.T) { fipstest.Rerun(t, "TestA", "TestB") }
//	func TestFIPSModeIsOn(t *testing.T) { fipstest.ModeIsOn(t) }
package fipstest

import (
	"crypto/fips140"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// Rerun runs the named tests of the current test binary again in a child
// process with GODEBUG=fips140=only, and fails t if they fail or if the
// child did not confirm the mode was enforced (TestFIPSModeIsOn).
func Rerun(t *testing.T, tests ...string) {
	t.Helper()
	if fips140.Enforced() {
		t.Skip("already running with fips140=only")
	}
	if testing.Short() {
		t.Skip("re-runs the test binary")
	}
	pattern := "^(" + strings.Join(append(tests, "TestFIPSModeIsOn"), "|") + ")$"
	cmd := exec.Command(os.Args[0], "-test.count=1", "-test.v", "-test.run="+pattern)
	cmd.Env = append(os.Environ(), "GODEBUG=fips140=only")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tests under fips140=only: %v\n%s", err, out)
	}
	// Guard against a run that silently tested nothing in FIPS mode: the
	// mode must be confirmed, and every named test (a name may be a pattern)
	// must have run and passed, not been renamed away or skipped.
	if !strings.Contains(string(out), "--- PASS: TestFIPSModeIsOn") {
		t.Fatalf("FIPS run did not confirm fips140=only enforcement:\n%s", out)
	}
	for _, name := range tests {
		if !regexp.MustCompile(`(?m)^--- PASS: (` + name + `) \(`).Match(out) {
			t.Fatalf("%s did not run and pass under fips140=only:\n%s", name, out)
		}
	}
}

// ModeIsOn passes only inside Rerun's child process; elsewhere it skips.
func ModeIsOn(t *testing.T) {
	t.Helper()
	if !fips140.Enforced() {
		t.Skip("run by TestFIPS140Only with GODEBUG=fips140=only")
	}
}
