package notice

import (
	"encoding/json"
	"testing"
	"time"
)

// During a rolling upgrade, replicas of earlier versions follow the same
// log and deliver to their watchers every kind they read but AccessRotated.
// A credential's creation or deletion must reach them as AccessRotated (they
// re-read the credential), never as a kind they would announce as a
// revocation; this version reads it back as what it was.
func TestCredentialChangesReadAsAccessRotatedByEarlierVersions(t *testing.T) {
	for _, kind := range []Kind{CredentialCreated, CredentialDeleted} {
		n := Notice{CredentialID: "acme", Kind: kind, DetectedAt: time.Unix(1700000000, 0).UTC()}
		raw, err := json.Marshal(n)
		if err != nil {
			t.Fatal(err)
		}
		// An earlier version's reading: the kind number alone.
		var earlier struct {
			Kind int `json:"kind"`
		}
		if err := json.Unmarshal(raw, &earlier); err != nil {
			t.Fatal(err)
		}
		if Kind(earlier.Kind) != AccessRotated {
			t.Errorf("kind %d stored as %d (%s); earlier versions would deliver it to watchers", kind, earlier.Kind, raw)
		}
		var back Notice
		if err := json.Unmarshal(raw, &back); err != nil {
			t.Fatal(err)
		}
		if back.Kind != kind || back.CredentialID != "acme" || !back.DetectedAt.Equal(n.DetectedAt) {
			t.Errorf("read back %+v, want %+v", back, n)
		}
	}
	// The kinds earlier versions know are stored as before.
	for _, kind := range []Kind{FamilyRevoked, FamilyActivated, AccessRotated} {
		raw, err := json.Marshal(Notice{CredentialID: "acme", Kind: kind})
		if err != nil {
			t.Fatal(err)
		}
		var back Notice
		if err := json.Unmarshal(raw, &back); err != nil || back.Kind != kind {
			t.Errorf("kind %d read back as %d (%v): %s", kind, back.Kind, err, raw)
		}
	}
}
