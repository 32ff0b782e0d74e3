package audit

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rotavault/rotavault/boltstore"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/memstore"
)

// The first head (seq 0) is anchored with the key, before any record: a
// store holding the key but no head has had its head deleted.
func TestFirstAnchorIsWrittenWithTheKey(t *testing.T) {
	cfg := newConfig(t)
	var witness bytes.Buffer
	cfg.Witness = &witness
	l := openLog(t, cfg)
	head, _, err := readHead(context.Background(), cfg.Store, DefaultHeadKey)
	if err != nil || head == nil || head.Seq != 0 {
		t.Fatalf("head after the first open: %+v, %v; want seq 0", head, err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(witness.String(), `"seq":0`) {
		t.Errorf("the witness did not receive the first head: %q", witness.String())
	}
	rep, err := Verify(context.Background(), cfg)
	if err != nil || rep.Records != 0 || rep.Anchor == nil {
		t.Fatalf("verify of a new trail: %+v, %v", rep, err)
	}
}

func TestDeletedAnchorIsDetected(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		damage func(t *testing.T, cfg Config)
	}{
		{"head deleted", func(*testing.T, Config) {}},
		{"head deleted and the tail cut", func(t *testing.T, cfg Config) { writeLines(t, cfg.Path, readLines(t, cfg.Path)[:5]) }},
		{"head and file deleted", func(t *testing.T, cfg Config) {
			if err := os.Remove(cfg.Path); err != nil {
				t.Fatal(err)
			}
		}},
		{"head deleted and the file emptied", func(t *testing.T, cfg Config) { writeLines(t, cfg.Path, nil) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := newConfig(t)
			writeTrail(t, cfg, 7)
			if err := cfg.Store.Delete(ctx, DefaultHeadKey); err != nil {
				t.Fatal(err)
			}
			tt.damage(t, cfg)
			wantNoAnchor(t, cfg)
		})
	}
}

// An operator may accept a missing head; the acceptance is in the trail,
// and from then on the head is anchored again.
func TestAcceptedMissingAnchorIsAudited(t *testing.T) {
	ctx := context.Background()
	cfg := newConfig(t)
	writeTrail(t, cfg, 7)
	if err := cfg.Store.Delete(ctx, DefaultHeadKey); err != nil {
		t.Fatal(err)
	}
	accepting := cfg
	accepting.AcceptMissingAnchor = true
	l, err := Open(WithActor(ctx, "operator"), accepting)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, cfg.Path)
	if len(lines) != 8 || !bytes.Contains(lines[7], []byte(`"actor":"operator","action":"`+ActionAnchorMissingAccepted+`"`)) {
		t.Fatalf("last record %s, want the acceptance by the operator", lines[len(lines)-1])
	}
	rep, err := Verify(ctx, cfg)
	if err != nil || rep.Records != 8 || rep.Anchor == nil || rep.Anchor.Seq != 8 {
		t.Fatalf("verify after the acceptance: %+v, %v", rep, err)
	}
	// The flag accepts a missing head, not a broken chain.
	if err := cfg.Store.Delete(ctx, DefaultHeadKey); err != nil {
		t.Fatal(err)
	}
	writeLines(t, cfg.Path, append(lines[:2:2], lines[3:]...))
	_, err = Open(ctx, accepting)
	wantBroken(t, err, 3, 4, ProblemSeqGap)
}

// Replicas sharing a store each anchor their own head: a replica with no
// head and no records is new, one with records and no head is not.
func TestReplicaHeads(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	first := Config{Path: filepath.Join(t.TempDir(), "audit.jsonl"), Store: st, HeadKey: "audit/heads/a"}
	writeTrail(t, first, 2)
	second := Config{Path: filepath.Join(t.TempDir(), "audit.jsonl"), Store: st, HeadKey: "audit/heads/b"}
	writeTrail(t, second, 1)
	if rep, err := Verify(ctx, second); err != nil || rep.Records != 1 {
		t.Fatalf("the second replica's trail: %+v, %v", rep, err)
	}
	if err := st.Delete(ctx, "audit/heads/b"); err != nil {
		t.Fatal(err)
	}
	wantNoAnchor(t, second)
}

// wantNoAnchor checks that Verify and Open both refuse cfg's trail for its
// missing head.
func wantNoAnchor(t *testing.T, cfg Config) {
	t.Helper()
	_, err := Verify(context.Background(), cfg)
	wantBroken(t, err, 1, 1, ProblemNoAnchor)
	_, err = Open(context.Background(), cfg)
	wantBroken(t, err, 1, 1, ProblemNoAnchor)
}

// A store copied back from a backup brings back an older head, and a file
// cut to match it verifies: only a witness kept elsewhere tells.
func TestWitnessDetectsARolledBackStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	key, err := boltstore.GenerateKeyFile(filepath.Join(dir, "store.key"))
	if err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(dir, "rotavault.db")
	openStore := func() *boltstore.Store {
		bs, err := boltstore.Open(dbPath, key, boltstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = bs.Close() })
		return bs
	}
	var witness bytes.Buffer
	session := func(from, to int) {
		bs := openStore()
		cfg := Config{Path: filepath.Join(dir, "audit.jsonl"), Store: bs, Witness: &witness}
		l := openLog(t, cfg)
		for i := from; i <= to; i++ {
			if err := l.Record(ctx, testEvent(i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if err := bs.Close(); err != nil {
			t.Fatal(err)
		}
	}
	session(1, 5)
	backup, err := os.ReadFile(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	session(6, 7)

	// The attacker copies the backup back and cuts the file to match.
	if err := os.WriteFile(dbPath, backup, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Path: filepath.Join(dir, "audit.jsonl"), Store: openStore()}
	writeLines(t, cfg.Path, readLines(t, cfg.Path)[:5])
	if rep, err := Verify(ctx, cfg); err != nil || rep.Records != 5 {
		t.Fatalf("without the witness the rollback goes unnoticed, as documented: %+v, %v", rep, err)
	}
	// Lines another store signed, or nobody did, change nothing.
	noise := `{"witness":"rotavault-audit","head_key":"audit/head","seq":99,"mac":"` + strings.Repeat("0", 64) + `","sig":"` + strings.Repeat("a", 64) + `"}` + "\n" +
		`{"witness":"rotavault-audit","head_key":"audit/heads/x","seq":98}` + "\nnot json\n"
	cfg.CheckWitness = io.MultiReader(strings.NewReader(noise), bytes.NewReader(witness.Bytes()))
	rep, err := Verify(ctx, cfg)
	wantBroken(t, err, 7, 7, ProblemRolledBack)
	if rep.Witnessed == nil || rep.Witnessed.Seq != 7 {
		t.Errorf("report %+v, want the witness's head at seq 7", rep)
	}
	var ce *ChainError
	if errors.As(err, &ce) && !strings.Contains(ce.Detail, "rolled back") {
		t.Errorf("detail %q, want it to say the store was rolled back", ce.Detail)
	}

	// The store intact but the file cut: the witness names the loss too.
	cfg.CheckWitness = bytes.NewReader(witness.Bytes())
	cfg.Store = &headOverride{Store: cfg.Store, head: lastWitnessed(t, witness.Bytes())}
	_, err = Verify(ctx, cfg)
	wantBroken(t, err, 6, 6, ProblemTruncated)
}

// headOverride serves a given anchored head: the store as it was before
// the rollback, for the truncation case.
type headOverride struct {
	store.Store
	head []byte
}

func (h *headOverride) Get(ctx context.Context, key string) (store.Record, error) {
	if key == DefaultHeadKey {
		return store.Record{Key: key, Value: h.head, Version: 99}, nil
	}
	return h.Store.Get(ctx, key)
}

// lastWitnessed returns the head of the witness's last line as the store
// encodes it.
func lastWitnessed(t *testing.T, witness []byte) []byte {
	t.Helper()
	lines := bytes.Split(bytes.TrimSpace(witness), []byte("\n"))
	last := lines[len(lines)-1]
	i := bytes.Index(last, []byte(`"seq":`))
	j := bytes.Index(last, []byte(`,"sig"`))
	return append(append([]byte("{"), last[i:j]...), '}')
}
