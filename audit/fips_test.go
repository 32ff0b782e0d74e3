package audit

import (
	"crypto/fips140"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestFIPS140Only re-runs the chain's tests with GODEBUG=fips140=only,
// where any non-approved algorithm fails: HMAC-SHA256 and the key's
// generation must keep working for deployments that require FIPS 140-3.
func TestFIPS140Only(t *testing.T) {
	if fips140.Enforced() {
		t.Skip("already running with fips140=only")
	}
	if testing.Short() {
		t.Skip("re-runs the test binary")
	}
	cmd := exec.Command(os.Args[0], "-test.count=1", "-test.v",
		"-test.run=^(TestCleanChainVerifies|TestTamperingDetected|TestRestartContinuesChain|TestConcurrentRecords|TestFIPSModeIsOn)$")
	cmd.Env = append(os.Environ(), "GODEBUG=fips140=only")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tests under fips140=only: %v\n%s", err, out)
	}
	// Guard against a run that silently tested nothing in FIPS mode.
	if !strings.Contains(string(out), "--- PASS: TestFIPSModeIsOn") {
		t.Fatalf("FIPS run did not confirm fips140=only enforcement:\n%s", out)
	}
}

// TestFIPSModeIsOn passes only inside TestFIPS140Only's child.
func TestFIPSModeIsOn(t *testing.T) {
	if !fips140.Enforced() {
		t.Skip("run by TestFIPS140Only with GODEBUG=fips140=only")
	}
}
