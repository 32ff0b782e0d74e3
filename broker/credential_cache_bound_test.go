package broker

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/family"
)

// The README: "a replica re-reads a credential record at most every 30 s,
// so an update made on another replica (a rotated client secret) arrives
// within that". A claim on the cached view reads no credential record
// until family.CredentialCacheTTL (30 s) has passed since the last read,
// and reads it once it has.
func TestClaimReadsTheCredentialOnceItsCacheTTLPassed(t *testing.T) {
	if family.CredentialCacheTTL != 30*time.Second {
		t.Errorf("the credential cache lasts %s; the README says 30 s", family.CredentialCacheTTL)
	}
	for _, tt := range []struct {
		name      string
		after     time.Duration
		wantReads int64
	}{
		{"just inside the cache's lifetime", family.CredentialCacheTTL - time.Millisecond, 0},
		{"at its end", family.CredentialCacheTTL, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newFamHarness(t)
			h.put(h.record(family.StateActive)) // reads the credential now
			var reads atomic.Int64
			defer h.st.inject(&fault{op: "get", prefix: family.CredentialsPrefix, before: func() { reads.Add(1) }})()
			h.clk.Add(tt.after)
			if l, _, err := h.b.acquire(h.ctx, h.e, always, nil); err != nil || l == nil {
				t.Fatalf("acquire: %v", err)
			}
			if got := reads.Load(); got != tt.wantReads {
				t.Errorf("a claim %s after the last read read the credential record %d times, want %d", tt.after, got, tt.wantReads)
			}
		})
	}
}
