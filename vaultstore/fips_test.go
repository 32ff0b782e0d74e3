package vaultstore_test

import (
	"testing"

	"github.com/rotavault/rotavault/internal/fipstest"
)

// Transit envelope encryption (AES-256-GCM data keys) and TLS to Vault must
// keep working for deployments that require FIPS 140-3.
func TestFIPS140Only(t *testing.T) {
	fipstest.Rerun(t, "TestTransitContract", "TestTLSFromEnvironment")
}

func TestFIPSModeIsOn(t *testing.T) { fipstest.ModeIsOn(t) }
