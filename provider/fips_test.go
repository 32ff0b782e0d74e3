package provider_test

import (
	"testing"

	"github.com/rotavault/rotavault/internal/fipstest"
)

// Salesforce response signatures (HMAC-SHA256) and the HTTPS client must
// keep working for deployments that require FIPS 140-3.
func TestFIPS140Only(t *testing.T) {
	fipstest.Rerun(t, "TestRefreshSalesforceResponse", "TestVerifySalesforceSignature", "TestSimCorruptSignatures", "TestConcurrentRefreshes", "TestShortSecretSignature")
}

func TestFIPSModeIsOn(t *testing.T) { fipstest.ModeIsOn(t) }
