package main

import (
	"testing"

	"github.com/rotavault/rotavault/internal/fipstest"
)

// The whole server — embedded store, audit chain, mTLS, bearer tokens,
// policy — must run for deployments that require FIPS 140-3.
func TestFIPS140Only(t *testing.T) {
	fipstest.Rerun(t, "TestServeWithMTLSAndPolicy", "TestAuditVerify.*")
}

func TestFIPSModeIsOn(t *testing.T) { fipstest.ModeIsOn(t) }
