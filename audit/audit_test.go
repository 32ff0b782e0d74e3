package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/boltstore"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/memstore"
)

func testEvent(i int) Event {
	return Event{
		Time:       time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).Add(time.Duration(i) * time.Second),
		Actor:      "tester",
		Action:     ActionRotated,
		Credential: fmt.Sprintf("cred-%d", i),
		Family:     "fam",
		Generation: uint64(i),
	}
}

func openLog(t *testing.T, cfg Config) *FileLog {
	t.Helper()
	l, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// writeTrail writes n records (seq 1..n) and closes the log.
func writeTrail(t *testing.T, cfg Config, n int) {
	t.Helper()
	l := openLog(t, cfg)
	for i := 1; i <= n; i++ {
		if err := l.Record(context.Background(), testEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

func newConfig(t *testing.T) Config {
	t.Helper()
	return Config{Path: filepath.Join(t.TempDir(), "audit.jsonl"), Store: memstore.New()}
}

func readLines(t *testing.T, path string) [][]byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.SplitAfter(raw, []byte("\n"))[:bytes.Count(raw, []byte("\n"))]
}

func writeLines(t *testing.T, path string, lines [][]byte) {
	t.Helper()
	if err := os.WriteFile(path, bytes.Join(lines, nil), 0o600); err != nil {
		t.Fatal(err)
	}
}

// wantBroken checks that err is a *ChainError naming line, seq and
// problem.
func wantBroken(t *testing.T, err error, line int, seq uint64, problem Problem) {
	t.Helper()
	var ce *ChainError
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v, want a *ChainError (%s at line %d)", err, problem, line)
	}
	if !errors.Is(err, ErrChainBroken) {
		t.Errorf("err does not wrap ErrChainBroken")
	}
	if ce.Line != line || ce.Seq != seq || ce.Problem != problem {
		t.Fatalf("got line %d seq %d %q (%v), want line %d seq %d %q", ce.Line, ce.Seq, ce.Problem, err, line, seq, problem)
	}
}

func TestCleanChainVerifies(t *testing.T) {
	cfg := newConfig(t)
	writeTrail(t, cfg, 10)
	rep, err := Verify(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Records != 10 || rep.Last.Seq != 10 || rep.Anchor == nil || rep.Anchor.Seq != 10 || rep.BeyondAnchor != 0 {
		t.Fatalf("report = %+v", rep)
	}
	// Line tools keep working: the event's fields are flat in the line.
	lines := readLines(t, cfg.Path)
	if !bytes.Contains(lines[2], []byte(`"action":"rotated","credential":"cred-3"`)) {
		t.Fatalf("line 3 = %s", lines[2])
	}
	if !bytes.HasPrefix(lines[0], []byte(`{"seq":1,"prev":"`+strings.Repeat("0", 64)+`",`)) {
		t.Fatalf("line 1 = %s", lines[0])
	}
}

// TestCanonicalBytes pins the documented format: a verifier written from
// the package doc alone computes the same mac.
func TestCanonicalBytes(t *testing.T) {
	cfg := newConfig(t)
	writeTrail(t, cfg, 2)
	key, err := loadKey(context.Background(), cfg.Store)
	if err != nil {
		t.Fatal(err)
	}
	prev := make([]byte, 32)
	for i, line := range readLines(t, cfg.Path) {
		line = bytes.TrimSuffix(line, []byte("\n"))
		canonical := append(bytes.Clone(line[:len(line)-74]), '}')
		m := computeMAC(key, MAC(prev), canonical)
		if got := string(line[len(line)-74:]); got != `,"mac":"`+m.String()+`"}` {
			t.Fatalf("record %d: suffix %s, want mac %s", i+1, got, m)
		}
		prev = m[:]
	}
}

func TestTamperingDetected(t *testing.T) {
	const n = 8
	tests := []struct {
		name    string
		tamper  func(t *testing.T, cfg Config, lines [][]byte) [][]byte
		line    int
		seq     uint64
		problem Problem
	}{
		{"one byte of a field edited", func(_ *testing.T, _ Config, lines [][]byte) [][]byte {
			lines[4] = bytes.Replace(lines[4], []byte(`"cred-5"`), []byte(`"cred-X"`), 1)
			return lines
		}, 5, 5, ProblemBadMAC},
		{"seq edited", func(_ *testing.T, _ Config, lines [][]byte) [][]byte {
			lines[4] = bytes.Replace(lines[4], []byte(`"seq":5`), []byte(`"seq":6`), 1)
			return lines
		}, 5, 6, ProblemBadMAC},
		{"mac written in uppercase", func(_ *testing.T, _ Config, lines [][]byte) [][]byte {
			// The whole mac: its last few digits alone may have no letter
			// to change.
			i := bytes.Index(lines[2], []byte(`"mac":"`)) + len(`"mac":"`)
			lines[2] = append(bytes.Clone(lines[2][:i]), bytes.ToUpper(lines[2][i:])...)
			return lines
		}, 3, 3, ProblemMalformed},
		{"middle record deleted", func(_ *testing.T, _ Config, lines [][]byte) [][]byte {
			return append(lines[:4], lines[5:]...)
		}, 5, 6, ProblemSeqGap},
		{"two records swapped", func(_ *testing.T, _ Config, lines [][]byte) [][]byte {
			lines[3], lines[4] = lines[4], lines[3]
			return lines
		}, 4, 5, ProblemSeqGap},
		{"first record deleted", func(_ *testing.T, _ Config, lines [][]byte) [][]byte {
			return lines[1:]
		}, 1, 2, ProblemSeqGap},
		{"tail truncated below the anchor", func(_ *testing.T, _ Config, lines [][]byte) [][]byte {
			return lines[:5]
		}, 6, 6, ProblemTruncated},
		{"every record deleted", func(_ *testing.T, _ Config, _ [][]byte) [][]byte {
			return nil
		}, 1, 1, ProblemTruncated},
		{"a line that is not JSON", func(_ *testing.T, _ Config, lines [][]byte) [][]byte {
			lines[6] = []byte("rm -rf /\n")
			return lines
		}, 7, 7, ProblemNotJSON},
		{"an incomplete last line", func(_ *testing.T, _ Config, lines [][]byte) [][]byte {
			return append(lines, []byte(`{"seq":9,"prev":"`))
		}, 9, 9, ProblemIncomplete},
		{"an unchained line appended", func(_ *testing.T, _ Config, lines [][]byte) [][]byte {
			return append(lines, []byte(`{"seq":9,"action":"rotated"}`+"\n"))
		}, 9, 9, ProblemMalformed},
		{"a record from another chain under the same key spliced in", func(t *testing.T, cfg Config, lines [][]byte) [][]byte {
			// A second trail under the same store (another node's): its
			// records carry valid macs, but follow other records.
			other := Config{Path: filepath.Join(t.TempDir(), "other.jsonl"), Store: cfg.Store, HeadKey: "audit/heads/other"}
			l := openLog(t, other)
			for i := 1; i <= 5; i++ {
				if err := l.Record(context.Background(), testEvent(100+i)); err != nil {
					t.Fatal(err)
				}
			}
			_ = l.Close()
			lines[4] = readLines(t, other.Path)[4]
			return lines
		}, 5, 5, ProblemPrevMismatch},
		{"chain rebuilt from record 3 with plain SHA-256, no key", func(_ *testing.T, _ Config, lines [][]byte) [][]byte {
			prev := macOf(lines[1])
			for i := 2; i < len(lines); i++ {
				line := bytes.TrimSuffix(lines[i], []byte("\n"))
				var b recordBody
				mustParseBody(line, &b)
				b.Prev = hex.EncodeToString(prev[:])
				if i == 2 {
					b.Credential = "forged"
				}
				body := mustMarshal(b)
				sum := sha256.Sum256(append(prev[:], body...))
				lines[i] = []byte(string(body[:len(body)-1]) + `,"mac":"` + hex.EncodeToString(sum[:]) + `"}` + "\n")
				prev = sum
			}
			return lines
		}, 3, 3, ProblemBadMAC},
		{"last record replaced by a plain SHA-256 record", func(_ *testing.T, _ Config, lines [][]byte) [][]byte {
			last := bytes.TrimSuffix(lines[n-1], []byte("\n"))
			var b recordBody
			mustParseBody(last, &b)
			b.Detail = "nothing happened"
			body := mustMarshal(b)
			prev := macOf(lines[n-2])
			sum := sha256.Sum256(append(prev[:], body...))
			lines[n-1] = []byte(string(body[:len(body)-1]) + `,"mac":"` + hex.EncodeToString(sum[:]) + `"}` + "\n")
			return lines
		}, n, n, ProblemBadMAC},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := newConfig(t)
			writeTrail(t, cfg, n)
			orig := readLines(t, cfg.Path)
			lastLine := orig[n-1]
			tampered := tt.tamper(t, cfg, orig)
			writeLines(t, cfg.Path, tampered)
			_, err := Verify(context.Background(), cfg)
			wantBroken(t, err, tt.line, tt.seq, tt.problem)
			// Open checks the tail only: damage deep in a file whose last
			// line is still the anchored head is the verifier's to find.
			if len(tampered) > 0 && bytes.Equal(tampered[len(tampered)-1], lastLine) {
				return
			}
			_, err = Open(context.Background(), cfg)
			wantBroken(t, err, tt.line, tt.seq, tt.problem)
		})
	}
}

func macOf(line []byte) MAC {
	line = bytes.TrimSuffix(line, []byte("\n"))
	var m MAC
	if _, err := hex.Decode(m[:], line[len(line)-66:len(line)-2]); err != nil {
		panic(err)
	}
	return m
}

func TestFileDeleted(t *testing.T) {
	cfg := newConfig(t)
	writeTrail(t, cfg, 3)
	if err := os.Remove(cfg.Path); err != nil {
		t.Fatal(err)
	}
	_, err := Verify(context.Background(), cfg)
	wantBroken(t, err, 1, 1, ProblemMissing)
	_, err = Open(context.Background(), cfg)
	wantBroken(t, err, 1, 1, ProblemMissing)
	if _, serr := os.Stat(cfg.Path); !errors.Is(serr, os.ErrNotExist) {
		t.Fatalf("Open created a new trail over a deleted one: %v", serr)
	}
}

func TestRestartContinuesChain(t *testing.T) {
	// The real embedded store, reopened like a restarted server.
	dir := t.TempDir()
	key, err := boltstore.GenerateKeyFile(filepath.Join(dir, "store.key"))
	if err != nil {
		t.Fatal(err)
	}
	next := 1
	for range 3 {
		bs, err := boltstore.Open(filepath.Join(dir, "rotavault.db"), key, boltstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		cfg := Config{Path: filepath.Join(dir, "audit.jsonl"), Store: bs}
		l := openLog(t, cfg)
		if last, _ := l.Head(); last.Seq != uint64(next-1) {
			t.Fatalf("reopened at seq %d, want %d", last.Seq, next-1)
		}
		for range 4 {
			if err := l.Record(context.Background(), testEvent(next)); err != nil {
				t.Fatal(err)
			}
			next++
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		rep, err := Verify(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Records != uint64(next-1) || rep.BeyondAnchor != 0 {
			t.Fatalf("report %+v after %d records", rep, next-1)
		}
		if err := bs.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestConcurrentRecords(t *testing.T) {
	cfg := newConfig(t)
	l := openLog(t, cfg)
	const workers, each = 16, 40
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				if err := l.Record(context.Background(), testEvent(w*1000+i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	// Anchoring runs in the background: await it.
	poll.UntilSeen(t, 10*time.Second, "the head anchored", func() (bool, string) {
		last, anchored := l.Head()
		if last.Seq != workers*each {
			t.Fatalf("head %+v, want seq %d", last, workers*each)
		}
		return anchored == last.Seq, fmt.Sprintf("head %d anchored at %d", last.Seq, anchored)
	})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Records != workers*each || rep.BeyondAnchor != 0 {
		t.Fatalf("report %+v", rep)
	}
}

// flakyStore fails writes to the head record while down is set; with
// lostReply it performs them and then reports a failure, as a store whose
// answer timed out would.
type flakyStore struct {
	store.Store
	down, lostReply atomic.Bool
}

func (s *flakyStore) Put(ctx context.Context, key string, value []byte, expected uint64) (uint64, error) {
	if key == DefaultHeadKey {
		if s.down.Load() {
			return 0, errors.New("store unavailable")
		}
		if s.lostReply.Load() {
			if _, err := s.Store.Put(ctx, key, value, expected); err != nil {
				return 0, err
			}
			return 0, context.DeadlineExceeded
		}
	}
	return s.Store.Put(ctx, key, value, expected)
}

func TestHeadLagsWhenTheStoreFails(t *testing.T) {
	st := &flakyStore{Store: memstore.New()}
	cfg := Config{Path: filepath.Join(t.TempDir(), "audit.jsonl"), Store: st}
	l := openLog(t, cfg)
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		if err := l.Record(ctx, testEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Anchor(ctx); err != nil {
		t.Fatal(err)
	}
	st.down.Store(true)
	for i := 4; i <= 6; i++ {
		if err := l.Record(ctx, testEvent(i)); err != nil {
			t.Fatalf("a record written to the file must not fail for its anchor: %v", err)
		}
	}
	if err := l.Anchor(ctx); err == nil {
		t.Fatal("anchoring succeeded with the store down")
	}
	if last, anchored := l.Head(); last.Seq != 6 || anchored != 3 {
		t.Fatalf("head %d anchored %d, want 6 and 3", last.Seq, anchored)
	}
	rep, err := Verify(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Records != 6 || rep.BeyondAnchor != 3 {
		t.Fatalf("report %+v, want 6 records, 3 beyond the anchor", rep)
	}

	// Records beyond the anchor are still protected against editing...
	lines := readLines(t, cfg.Path)
	edited := append([][]byte(nil), lines...)
	edited[4] = bytes.Replace(edited[4], []byte("cred-5"), []byte("cred-0"), 1)
	writeLines(t, cfg.Path, edited)
	_, err = Verify(ctx, cfg)
	wantBroken(t, err, 5, 5, ProblemBadMAC)
	// ...and cutting below the anchor is caught.
	writeLines(t, cfg.Path, lines[:2])
	_, err = Verify(ctx, cfg)
	wantBroken(t, err, 3, 3, ProblemTruncated)
	writeLines(t, cfg.Path, lines)

	// A restart with the store back re-anchors the lagging head.
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	st.down.Store(false)
	l = openLog(t, cfg)
	if last, anchored := l.Head(); last.Seq != 6 || anchored != 6 {
		t.Fatalf("after reopening: head %d anchored %d, want 6 and 6", last.Seq, anchored)
	}

	// A write that succeeded but whose answer was lost is recognised.
	st.lostReply.Store(true)
	if err := l.Record(ctx, testEvent(7)); err != nil {
		t.Fatal(err)
	}
	_ = l.Anchor(ctx) // applied, but its answer is lost
	st.lostReply.Store(false)
	if err := l.Record(ctx, testEvent(8)); err != nil {
		t.Fatal(err)
	}
	if err := l.Anchor(ctx); err != nil {
		t.Fatalf("anchoring after a lost reply: %v", err)
	}
	if last, anchored := l.Head(); last.Seq != 8 || anchored != 8 {
		t.Fatalf("after a lost reply: head %d anchored %d, want 8 and 8", last.Seq, anchored)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err = Verify(ctx, cfg)
	if err != nil || rep.Records != 8 || rep.BeyondAnchor != 0 {
		t.Fatalf("report %+v, %v", rep, err)
	}
}

func TestCloseAnchorsALaggingHead(t *testing.T) {
	st := &flakyStore{Store: memstore.New()}
	cfg := Config{Path: filepath.Join(t.TempDir(), "audit.jsonl"), Store: st}
	l := openLog(t, cfg)
	st.down.Store(true)
	if err := l.Record(context.Background(), testEvent(1)); err != nil {
		t.Fatal(err)
	}
	st.down.Store(false)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(context.Background(), cfg)
	if err != nil || rep.Anchor == nil || rep.Anchor.Seq != 1 {
		t.Fatalf("report %+v, %v", rep, err)
	}
}

func TestOpenRefuses(t *testing.T) {
	t.Run("a trail from before the chain", func(t *testing.T) {
		cfg := newConfig(t)
		writeLines(t, cfg.Path, [][]byte{[]byte(`{"time":"2025-01-01T00:00:00Z","actor":"system","action":"rotated","credential":"a"}` + "\n")})
		// The store is new, so there is no key yet either.
		_, err := Open(context.Background(), cfg)
		wantBroken(t, err, 1, 1, ProblemNoKey)
		if _, err := cfg.Store.Get(context.Background(), KeyRecord); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Open created a key that could never verify the file: %v", err)
		}
		// A store of this version that has written nothing yet: the key
		// and the first head (seq 0).
		if _, err := createHead(context.Background(), cfg.Store, DefaultHeadKey); err != nil {
			t.Fatal(err)
		}
		if _, err := createKey(context.Background(), cfg.Store); err != nil {
			t.Fatal(err)
		}
		_, err = Open(context.Background(), cfg)
		wantBroken(t, err, 1, 1, ProblemMalformed)
	})
	t.Run("a trail without its store", func(t *testing.T) {
		cfg := newConfig(t)
		writeTrail(t, cfg, 2)
		cfg.Store = memstore.New()
		_, err := Open(context.Background(), cfg)
		wantBroken(t, err, 1, 1, ProblemNoKey)
		_, err = Verify(context.Background(), cfg)
		wantBroken(t, err, 1, 1, ProblemNoKey)
	})
}

func TestKeyNeverPrinted(t *testing.T) {
	cfg := newConfig(t)
	writeTrail(t, cfg, 1)
	k, err := loadKey(context.Background(), cfg.Store)
	if err != nil {
		t.Fatal(err)
	}
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("key", "key", k)
	for _, s := range []string{fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %s %x %d", k, k, k, k, k, k), fmt.Sprint(*k), logged.String()} {
		if strings.Contains(s, hex.EncodeToString(k.b[:])) || strings.Contains(s, string(k.b[:8])) ||
			strings.Contains(s, strings.Trim(fmt.Sprint(k.b[:4]), "[]")) {
			t.Fatalf("key material printed: %s", s)
		}
	}
}

// With a negative AnchorInterval every record is anchored before Record
// returns: no window in which the newest records can be cut off undetected.
func TestSynchronousAnchoring(t *testing.T) {
	cfg := newConfig(t)
	cfg.AnchorInterval = -1
	l := openLog(t, cfg)
	for i := 1; i <= 3; i++ {
		if err := l.Record(context.Background(), testEvent(i)); err != nil {
			t.Fatal(err)
		}
		if last, anchored := l.Head(); anchored != last.Seq || last.Seq != uint64(i) {
			t.Fatalf("after record %d: head %d anchored %d, want both %d", i, last.Seq, anchored, i)
		}
	}
	lines := readLines(t, cfg.Path)
	writeLines(t, cfg.Path, lines[:2])
	_, err := Verify(context.Background(), cfg)
	wantBroken(t, err, 3, 3, ProblemTruncated)
}
