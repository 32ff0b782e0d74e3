package notice

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/internal/jsonrec"
	"github.com/rotavault/rotavault/store/memstore"
)

// Onboarding appends a new credential's first FamilyActivated: its index is
// created without reading it first (the read would find nothing: one store
// read per onboarding). A credential whose index exists — a
// reauthentication, a revocation — still gets every sequence number in it.
func TestNewCredentialsIndexIsCreatedWithoutARead(t *testing.T) {
	st := &faultStore{Store: memstore.New()}
	r := newReplica(t, st)
	ctx := context.Background()
	var indexReads atomic.Int64
	st.inject(&readFault{op: "get", prefix: noticeIndexPrefix, match: func(string, []byte) bool {
		indexReads.Add(1)
		return false
	}})
	at := time.Unix(1, 0)
	r.notify(ctx, Notice{CredentialID: "acme", FamilyID: "f1", Kind: FamilyActivated, DetectedAt: at})
	if n := indexReads.Load(); n != 0 {
		t.Fatalf("a new credential's first activation read its index %d times, want 0", n)
	}
	r.notify(ctx, Notice{CredentialID: "acme", FamilyID: "f1", Kind: FamilyRevoked, Reason: ReasonAdminRevoked, DetectedAt: at})
	r.notify(ctx, Notice{CredentialID: "acme", FamilyID: "f2", Kind: FamilyActivated, DetectedAt: at})
	rec, err := st.Get(ctx, noticeIndexKey("acme"))
	if err != nil {
		t.Fatal(err)
	}
	var idx noticeIndex
	if err := jsonrec.Decode(rec.Value, &idx, &idx.Format); err != nil {
		t.Fatal(err)
	}
	if len(idx.Seqs) != 3 {
		t.Fatalf("index holds %v, want the 3 notices' sequence numbers", idx.Seqs)
	}
}
