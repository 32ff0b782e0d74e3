package server

import (
	"testing"

	"github.com/rotavault/rotavault/internal/fipstest"
)

// mTLS (ECDSA P-256 certificates, TLS 1.2+), bearer-token hashing and the
// authorization path must keep working for deployments that require
// FIPS 140-3.
func TestFIPS140Only(t *testing.T) {
	fipstest.Rerun(t, "TestAuthorizationMatrix", "TestCertificateReload", "TestRateLimitPerIdentityOverTLS")
}

func TestFIPSModeIsOn(t *testing.T) { fipstest.ModeIsOn(t) }
