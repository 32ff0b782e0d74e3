package boltstore

import (
	"testing"

	"github.com/rotavault/rotavault/internal/fipstest"
)

// The store must keep working for deployments that require FIPS 140-3.
func TestFIPS140Only(t *testing.T) {
	fipstest.Rerun(t, "TestContract", "TestRotateKey", "TestGenerateAndLoadKeyFile", "TestCommittedRecordStillOpens")
}

func TestFIPSModeIsOn(t *testing.T) { fipstest.ModeIsOn(t) }
