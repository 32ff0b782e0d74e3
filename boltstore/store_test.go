package boltstore

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/storetest"
)

// testKey returns a fixed key made of one repeated byte, so tests can name
// several distinct keys.
func testKey(t testing.TB, b byte) Key {
	t.Helper()
	k, err := ParseKey(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{b}, keySize)))
	if err != nil {
		t.Fatalf("ParseKey: %v", err)
	}
	return k
}

func openStore(t *testing.T, path string, key Key, opts Options) *Store {
	t.Helper()
	s, err := Open(path, key, opts)
	if err != nil {
		t.Fatalf("Open(%s, key %s): %v", path, key.ID(), err)
	}
	return s
}

func closeStore(t *testing.T, s *Store) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func put(t *testing.T, s store.Store, key, value string, expected uint64) {
	t.Helper()
	if _, err := s.Put(t.Context(), key, []byte(value), expected); err != nil {
		t.Fatalf("Put(%q, expected %d): %v", key, expected, err)
	}
}

func wantGet(t *testing.T, s store.Store, key, value string, version uint64) {
	t.Helper()
	rec, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	if string(rec.Value) != value || rec.Version != version {
		t.Fatalf("Get(%q) = (%q, version %d), want (%q, version %d)", key, rec.Value, rec.Version, value, version)
	}
}

// rawRecords returns every record of a closed store file, read with bbolt
// directly.
func rawRecords(t *testing.T, path string) map[string][]byte {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatalf("bolt.Open: %v", err)
	}
	defer db.Close()
	out := map[string][]byte{}
	err = db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte(recordsBucket)).ForEach(func(k, v []byte) error {
			out[string(k)] = bytes.Clone(v)
			return nil
		})
	})
	if err != nil {
		t.Fatalf("reading raw records: %v", err)
	}
	return out
}

// editRaw runs fn in a bbolt write transaction on a closed store file.
func editRaw(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatalf("bolt.Open: %v", err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatalf("editing raw file: %v", err)
	}
}

func TestContract(t *testing.T) {
	key := testKey(t, 1)
	storetest.Run(t, func(t *testing.T) store.Store {
		s := openStore(t, filepath.Join(t.TempDir(), "rotavault.db"), key, Options{})
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestNoPlaintextOnDisk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rotavault.db")
	s := openStore(t, path, testKey(t, 1), Options{})
	const secret = "refresh-token-5Aq9-DISTINCTIVE-SECRET"
	put(t, s, "tokens/fam1", secret, 0)
	put(t, s, "tokens/fam1", secret+"-v2", 1)
	closeStore(t, s)

	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, needle := range []string{secret, "DISTINCTIVE-SECRET", base64.StdEncoding.EncodeToString([]byte(secret))} {
		if bytes.Contains(raw, []byte(needle)) {
			t.Fatalf("store file contains %q in clear", needle)
		}
	}
	// The key itself is not plaintext data either.
	if bytes.Contains(raw, bytes.Repeat([]byte{1}, keySize)) {
		t.Fatal("store file contains the key material")
	}
	if !bytes.Contains(raw, []byte("tokens/fam1")) {
		t.Fatal("record key not found in the file: the test no longer looks at the right file")
	}
}

func TestTamperedRecordIsCorrupt(t *testing.T) {
	key := testKey(t, 1)
	tests := []struct {
		name   string
		target string // the key then read
		edit   func(t *testing.T, b *bolt.Bucket)
	}{
		{"ciphertext moved to another key", "b/victim", func(t *testing.T, b *bolt.Bucket) {
			if err := b.Put([]byte("b/victim"), bytes.Clone(b.Get([]byte("a/source")))); err != nil {
				t.Fatal(err)
			}
		}},
		{"version in header changed", "a/source", func(t *testing.T, b *bolt.Bucket) {
			raw := bytes.Clone(b.Get([]byte("a/source")))
			raw[headerSize-1]++ // version 2 -> 3
			if err := b.Put([]byte("a/source"), raw); err != nil {
				t.Fatal(err)
			}
		}},
		{"ciphertext byte flipped", "a/source", func(t *testing.T, b *bolt.Bucket) {
			raw := bytes.Clone(b.Get([]byte("a/source")))
			raw[len(raw)-20] ^= 0x01
			if err := b.Put([]byte("a/source"), raw); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated", "a/source", func(t *testing.T, b *bolt.Bucket) {
			if err := b.Put([]byte("a/source"), bytes.Clone(b.Get([]byte("a/source"))[:minRecordSize-1])); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "rotavault.db")
			s := openStore(t, path, key, Options{})
			put(t, s, "a/source", "secret-of-a", 0)
			put(t, s, "a/source", "secret-of-a-2", 1)
			put(t, s, "b/victim", "secret-of-b", 0)
			closeStore(t, s)
			editRaw(t, path, func(tx *bolt.Tx) error {
				tt.edit(t, tx.Bucket([]byte(recordsBucket)))
				return nil
			})

			s = openStore(t, path, key, Options{})
			defer closeStore(t, s)
			rec, err := s.Get(t.Context(), tt.target)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Get(%q) = (%q, %v), want ErrCorrupt", tt.target, rec.Value, err)
			}
		})
	}
}

func TestKeyCheckCannotPassAsRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rotavault.db")
	key := testKey(t, 1)
	closeStore(t, openStore(t, path, key, Options{}))
	editRaw(t, path, func(tx *bolt.Tx) error {
		check := bytes.Clone(tx.Bucket([]byte(metaBucket)).Get([]byte(metaKeyCheck)))
		return tx.Bucket([]byte(recordsBucket)).Put([]byte(metaKeyCheck), check)
	})
	s := openStore(t, path, key, Options{})
	defer closeStore(t, s)
	if _, err := s.Get(t.Context(), metaKeyCheck); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Get of the key check copied into the records: err = %v, want ErrCorrupt", err)
	}
}

func TestOpenWithWrongKey(t *testing.T) {
	keyA, keyB := testKey(t, 1), testKey(t, 2)
	tests := []struct {
		name    string
		records int
	}{
		{"empty store", 0},
		{"store with records", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "rotavault.db")
			s := openStore(t, path, keyA, Options{})
			for i := range tt.records {
				put(t, s, "k/"+string(rune('a'+i)), "v", 0)
			}
			closeStore(t, s)

			_, err := Open(path, keyB, Options{})
			if !errors.Is(err, ErrUnknownKey) {
				t.Fatalf("Open with another key: err = %v, want ErrUnknownKey", err)
			}
			if !strings.Contains(err.Error(), keyA.ID()) {
				t.Errorf("error %q does not name the key id the store needs (%s)", err, keyA.ID())
			}
			// The failed Open released the file and changed nothing.
			s = openStore(t, path, keyA, Options{})
			defer closeStore(t, s)
			if tt.records > 0 {
				wantGet(t, s, "k/a", "v", 1)
			}
		})
	}
}

func TestOpenRefusesStoreWithRecordsUnderMissingKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rotavault.db")
	keyA, keyB := testKey(t, 1), testKey(t, 2)
	s := openStore(t, path, keyA, Options{})
	put(t, s, "k/old", "under A", 0)
	closeStore(t, s)

	// The operator moves to key B, keeping A as a previous key, and writes.
	s = openStore(t, path, keyB, Options{PreviousKeys: []Key{keyA}})
	put(t, s, "k/new", "under B", 0)
	closeStore(t, s)

	// Dropping either key before a rotation leaves records nobody can read:
	// Open says so at once.
	for _, k := range []Key{keyA, keyB} {
		if _, err := Open(path, k, Options{}); !errors.Is(err, ErrUnknownKey) {
			t.Errorf("Open with only key %s: err = %v, want ErrUnknownKey", k.ID(), err)
		}
	}
}

func TestPreviousKeysRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rotavault.db")
	keyA, keyB := testKey(t, 1), testKey(t, 2)
	s := openStore(t, path, keyA, Options{})
	put(t, s, "k/1", "one", 0)
	put(t, s, "k/1", "one-2", 1)
	closeStore(t, s)

	var logs bytes.Buffer
	s = openStore(t, path, keyB, Options{PreviousKeys: []Key{keyA}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	// The operator learns that dropping key A now would strand records.
	if !strings.Contains(logs.String(), "rotate the key") || !strings.Contains(logs.String(), "records=1") {
		t.Errorf("Open logged no warning about records under a previous key:\n%s", logs.String())
	}
	wantGet(t, s, "k/1", "one-2", 2)
	put(t, s, "k/1", "one-3", 2)
	wantGet(t, s, "k/1", "one-3", 3)
	put(t, s, "k/2", "two", 0)
	closeStore(t, s)
	// New writes are sealed under B.
	raw := rawRecords(t, path)
	for _, k := range []string{"k/1", "k/2"} {
		r, err := DecodeRecord(raw[k])
		if err != nil {
			t.Fatalf("DecodeRecord(%s): %v", k, err)
		}
		if r.KeyIDString() != keyB.ID() {
			t.Errorf("record %s sealed under %s, want the current key %s", k, r.KeyIDString(), keyB.ID())
		}
	}
}

func TestRotateKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rotavault.db")
	keyA, keyB := testKey(t, 1), testKey(t, 2)
	s := openStore(t, path, keyA, Options{})
	put(t, s, "fam/1", "v1", 0)
	put(t, s, "fam/1", "v2", 1)
	put(t, s, "fam/2", "", 0)
	put(t, s, "x", "deep", 0)

	n, err := s.RotateKey(t.Context(), keyB)
	if err != nil {
		t.Fatalf("RotateKey: %v", err)
	}
	if n != 3 {
		t.Fatalf("RotateKey rewrote %d records, want 3", n)
	}
	// The open handle goes on working.
	wantGet(t, s, "fam/1", "v2", 2)
	put(t, s, "fam/1", "v3", 2)
	closeStore(t, s)

	if _, err := Open(path, keyA, Options{}); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("Open with the retired key: err = %v, want ErrUnknownKey", err)
	}
	s = openStore(t, path, keyB, Options{})
	wantGet(t, s, "fam/1", "v3", 3)
	wantGet(t, s, "fam/2", "", 1)
	wantGet(t, s, "x", "deep", 1)
	closeStore(t, s)
	for k, raw := range rawRecords(t, path) {
		r, err := DecodeRecord(raw)
		if err != nil {
			t.Fatalf("DecodeRecord(%s): %v", k, err)
		}
		if r.KeyIDString() != keyB.ID() {
			t.Errorf("record %s still sealed under %s after rotation", k, r.KeyIDString())
		}
	}
}

func TestRotateKeyAbortsWholly(t *testing.T) {
	keyA, keyB := testKey(t, 1), testKey(t, 2)
	tests := []struct {
		name    string
		prepare func(t *testing.T, path string) context.Context
		wantErr error
	}{
		{"cancelled context", func(t *testing.T, path string) context.Context {
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			return ctx
		}, context.Canceled},
		{"one record damaged", func(t *testing.T, path string) context.Context {
			editRaw(t, path, func(tx *bolt.Tx) error {
				b := tx.Bucket([]byte(recordsBucket))
				raw := bytes.Clone(b.Get([]byte("k/2")))
				raw[len(raw)-1] ^= 0xff
				return b.Put([]byte("k/2"), raw)
			})
			return t.Context()
		}, ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "rotavault.db")
			s := openStore(t, path, keyA, Options{})
			put(t, s, "k/1", "one", 0)
			put(t, s, "k/2", "two", 0)
			closeStore(t, s)
			ctx := tt.prepare(t, path)

			s = openStore(t, path, keyA, Options{})
			n, err := s.RotateKey(ctx, keyB)
			if !errors.Is(err, tt.wantErr) || n != 0 {
				t.Fatalf("RotateKey = (%d, %v), want (0, %v)", n, err, tt.wantErr)
			}
			// Writes after a failed rotation are still sealed under A.
			put(t, s, "k/3", "three", 0)
			closeStore(t, s)
			if _, err := Open(path, keyB, Options{}); !errors.Is(err, ErrUnknownKey) {
				t.Fatalf("Open with the new key after a failed rotation: err = %v, want ErrUnknownKey", err)
			}
			s = openStore(t, path, keyA, Options{})
			defer closeStore(t, s)
			wantGet(t, s, "k/1", "one", 1)
			wantGet(t, s, "k/3", "three", 1)
		})
	}
}

func TestBackup(t *testing.T) {
	dir := t.TempDir()
	key := testKey(t, 1)
	s := openStore(t, filepath.Join(dir, "rotavault.db"), key, Options{})
	defer closeStore(t, s)
	put(t, s, "fam/1", "before", 0)
	put(t, s, "fam/1", "before-2", 1)

	var buf bytes.Buffer
	if err := s.Backup(t.Context(), &buf); err != nil {
		t.Fatalf("Backup: %v", err)
	}
	put(t, s, "fam/1", "after", 2)
	put(t, s, "fam/2", "after", 0)

	copyPath := filepath.Join(dir, "backup.db")
	if err := os.WriteFile(copyPath, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	c := openStore(t, copyPath, key, Options{})
	defer closeStore(t, c)
	wantGet(t, c, "fam/1", "before-2", 2)
	if _, err := c.Get(t.Context(), "fam/2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("backup holds a record written after it: err = %v", err)
	}
	// A backup is as secret as the store.
	if bytes.Contains(buf.Bytes(), []byte("before-2")) {
		t.Fatal("backup contains a value in clear")
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := s.Backup(ctx, &bytes.Buffer{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Backup with cancelled ctx: err = %v, want context.Canceled", err)
	}
}

func TestReopenKeepsDataAndVersions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rotavault.db")
	key := testKey(t, 1)
	s := openStore(t, path, key, Options{})
	put(t, s, "a/1", "x", 0)
	put(t, s, "a/1", "y", 1)
	put(t, s, "a/2", "z", 0)
	put(t, s, "gone", "z", 0)
	if err := s.Delete(t.Context(), "gone"); err != nil {
		t.Fatal(err)
	}
	closeStore(t, s)

	s = openStore(t, path, key, Options{})
	defer closeStore(t, s)
	wantGet(t, s, "a/1", "y", 2)
	wantGet(t, s, "a/2", "z", 1)
	if _, err := s.Get(t.Context(), "gone"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted key after reopen: err = %v, want ErrNotFound", err)
	}
	if _, err := s.Put(t.Context(), "a/1", []byte("stale"), 1); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale CAS after reopen: err = %v, want ErrConflict", err)
	}
	put(t, s, "a/1", "w", 2)
	keys, err := s.List(t.Context(), "a/")
	if err != nil || strings.Join(keys, ",") != "a/1,a/2" {
		t.Fatalf("List after reopen = (%q, %v)", keys, err)
	}
}

func TestOpenLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rotavault.db")
	key := testKey(t, 1)
	s := openStore(t, path, key, Options{})

	const timeout = 150 * time.Millisecond
	start := time.Now()
	_, err := Open(path, key, Options{OpenTimeout: timeout})
	elapsed := time.Since(start)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: err = %v, want ErrLocked", err)
	}
	if !strings.Contains(err.Error(), "in use") {
		t.Errorf("error %q does not tell the operator the store is in use", err)
	}
	// bbolt polls the lock every 50ms, so it may give up a poll early.
	if elapsed > timeout+time.Second {
		t.Errorf("second Open gave up after %v, want within about %v", elapsed, timeout)
	}

	closeStore(t, s)
	s = openStore(t, path, key, Options{OpenTimeout: timeout})
	closeStore(t, s)
}

func TestOpenRejects(t *testing.T) {
	dir := t.TempDir()
	key := testKey(t, 1)
	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, bytes.Repeat([]byte("not a bbolt file "), 1024), 0o600); err != nil {
		t.Fatal(err)
	}
	newer := filepath.Join(dir, "newer.db")
	closeStore(t, openStore(t, newer, key, Options{}))
	editRaw(t, newer, func(tx *bolt.Tx) error {
		return tx.Bucket([]byte(metaBucket)).Put([]byte(metaFormat), []byte{storeFormatV1 + 1})
	})

	tests := []struct {
		name    string
		path    string
		key     Key
		opts    Options
		wantErr error
	}{
		{"not a store file", garbage, key, Options{}, ErrCorrupt},
		{"newer store format", newer, key, Options{}, ErrUnsupportedFormat},
		{"zero key", filepath.Join(dir, "new.db"), Key{}, Options{}, nil},
		{"zero previous key", filepath.Join(dir, "new.db"), key, Options{PreviousKeys: []Key{{}}}, nil},
		{"missing directory", filepath.Join(dir, "no", "such", "dir", "x.db"), key, Options{}, os.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Open(tt.path, tt.key, tt.opts)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("Open: err = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestNewFileMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rotavault.db")
	closeStore(t, openStore(t, path, testKey(t, 1), Options{}))
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("store file mode %04o, want 0600", perm)
	}
}

func TestUseAfterClose(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "rotavault.db"), testKey(t, 1), Options{})
	put(t, s, "k", "v", 0)
	closeStore(t, s)
	ctx := t.Context()
	if _, err := s.Get(ctx, "k"); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close: err = %v, want ErrClosed", err)
	}
	if _, err := s.Put(ctx, "k", nil, 1); !errors.Is(err, ErrClosed) {
		t.Errorf("Put after Close: err = %v, want ErrClosed", err)
	}
	if err := s.Delete(ctx, "k"); !errors.Is(err, ErrClosed) {
		t.Errorf("Delete after Close: err = %v, want ErrClosed", err)
	}
	if _, err := s.List(ctx, "a/"); !errors.Is(err, ErrClosed) {
		t.Errorf("List after Close: err = %v, want ErrClosed", err)
	}
	if err := s.Backup(ctx, &bytes.Buffer{}); !errors.Is(err, ErrClosed) {
		t.Errorf("Backup after Close: err = %v, want ErrClosed", err)
	}
	if _, err := s.RotateKey(ctx, testKey(t, 2)); !errors.Is(err, ErrClosed) {
		t.Errorf("RotateKey after Close: err = %v, want ErrClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestRotateKeyWhileServing rotates while readers and writers run: none of
// them sees an error, and afterwards no record is left under the old key.
func TestRotateKeyWhileServing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rotavault.db")
	keyA, keyB := testKey(t, 1), testKey(t, 2)
	s := openStore(t, path, keyA, Options{})
	const (
		workers = 4
		writes  = 60
	)
	for w := range workers {
		put(t, s, fmt.Sprintf("w/%d", w), "0", 0)
	}

	ctx := t.Context()
	started := make(chan struct{}, workers)
	errs := make(chan error, workers+1)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			key := fmt.Sprintf("w/%d", w)
			for i := range writes {
				if i == writes/3 {
					started <- struct{}{}
				}
				rec, err := s.Get(ctx, key)
				if err != nil {
					errs <- fmt.Errorf("get %s: %w", key, err)
					return
				}
				// Each worker owns its key, so a conflict would be a bug.
				if _, err := s.Put(ctx, key, []byte(strconv.Itoa(i+1)), rec.Version); err != nil {
					errs <- fmt.Errorf("put %s: %w", key, err)
					return
				}
			}
		})
	}
	for range workers {
		<-started
	}
	if _, err := s.RotateKey(ctx, keyB); err != nil {
		errs <- fmt.Errorf("rotate: %w", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	closeStore(t, s)

	s = openStore(t, path, keyB, Options{})
	defer closeStore(t, s)
	for w := range workers {
		wantGet(t, s, fmt.Sprintf("w/%d", w), strconv.Itoa(writes), writes+1)
	}
}
