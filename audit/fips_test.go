package audit

import (
	"testing"

	"github.com/rotavault/rotavault/internal/fipstest"
)

// HMAC-SHA256 and the key's generation must keep working for deployments
// that require FIPS 140-3.
func TestFIPS140Only(t *testing.T) {
	fipstest.Rerun(t, "TestCleanChainVerifies", "TestTamperingDetected", "TestRestartContinuesChain", "TestConcurrentRecords")
}

func TestFIPSModeIsOn(t *testing.T) { fipstest.ModeIsOn(t) }
