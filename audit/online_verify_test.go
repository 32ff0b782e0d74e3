package audit

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/rotavault/rotavault/store/memstore"
)

// A trail checked while records are appended and anchored is intact at
// every check: the check reads whole records only, and the anchor and the
// witness together.
func TestVerifyOnlineWhileRecording(t *testing.T) {
	var witness bytes.Buffer
	var witnessMu sync.Mutex
	cfg := Config{Path: filepath.Join(t.TempDir(), "audit.jsonl"), Store: memstore.New(), AnchorInterval: -1,
		Witness: writerFunc(func(p []byte) (int, error) {
			witnessMu.Lock()
			defer witnessMu.Unlock()
			return witness.Write(p)
		})}
	l := openLog(t, cfg)
	t.Cleanup(func() { _ = l.Close() })
	ctx := context.Background()
	const records = 300
	done := make(chan error, 1)
	go func() {
		for i := 1; i <= records; i++ {
			if err := l.Record(ctx, testEvent(i)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	checks := 0
	for finished := false; !finished; checks++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			finished = true
		default:
		}
		// The witness as it grows, like the file serve appends to.
		var read int
		lines := readerFunc(func(p []byte) (int, error) {
			witnessMu.Lock()
			defer witnessMu.Unlock()
			if read == witness.Len() {
				return 0, io.EOF
			}
			n := copy(p, witness.Bytes()[read:])
			read += n
			return n, nil
		})
		if _, err := l.VerifyOnline(ctx, lines); err != nil {
			t.Fatalf("check %d while recording: %v", checks, err)
		}
	}
	rep, err := l.VerifyOnline(ctx, nil)
	if err != nil || rep.Records != records || rep.Anchor == nil || rep.Anchor.Seq != records {
		t.Fatalf("after recording: %+v, %v; want %d records anchored", rep, err, records)
	}

	// An edited record is found while the log stays open.
	raw, err := os.ReadFile(cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.Path, bytes.Replace(raw, []byte(`"cred-7"`), []byte(`"cred-X"`), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	var ce *ChainError
	if _, err := l.VerifyOnline(ctx, nil); !errors.As(err, &ce) || ce.Problem != ProblemBadMAC || ce.Seq != 7 {
		t.Fatalf("edited record 7: %v, want a bad mac at seq 7", err)
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
