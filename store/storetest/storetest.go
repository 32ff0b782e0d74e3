// Package storetest is the contract suite every store.Store backend passes.
// A backend's test calls Run with a function that opens a fresh, empty store;
// a new backend is correct when the suite passes.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/rotavault/rotavault/store"
)

// Run checks the store.Store contract. open is called once per subtest and
// must return a fresh, empty store; it registers its own cleanup (t.Cleanup)
// for whatever it opens. Subtests do not run in parallel with each other, so
// a backend may share one server between them as long as each store is
// empty (for example by giving each its own key prefix inside the backend).
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"GetMissing", testGetMissing},
		{"CreateOnly", testCreateOnly},
		{"VersionsGrowByOne", testVersionsGrowByOne},
		{"CheckAndSetMismatch", testCheckAndSetMismatch},
		{"Delete", testDelete},
		{"DeleteMissing", testDeleteMissing},
		{"List", testList},
		{"ListInvalidPrefix", testListInvalidPrefix},
		{"ListPage", testListPage},
		{"ListPageInvalid", testListPageInvalid},
		{"ListPageSeesOwnWrites", testListPageSeesOwnWrites},
		{"InvalidKeys", testInvalidKeys},
		{"MaxKeyLen", testMaxKeyLen},
		{"ValuesAreCopied", testValuesAreCopied},
		{"EmptyValue", testEmptyValue},
		{"LargeValue", testLargeValue},
		{"CancelledContext", testCancelledContext},
		{"ConcurrentIncrements", testConcurrentIncrements},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.fn(t, open(t))
		})
	}
}

func mustPut(t *testing.T, s store.Store, key, value string, expected uint64) uint64 {
	t.Helper()
	v, err := s.Put(t.Context(), key, []byte(value), expected)
	if err != nil {
		t.Fatalf("Put(%q, expected %d): %v", key, expected, err)
	}
	if v != expected+1 {
		t.Fatalf("Put(%q, expected %d) = version %d, want %d", key, expected, v, expected+1)
	}
	return v
}

// wantRecord asserts that key holds value at version.
func wantRecord(t *testing.T, s store.Store, key, value string, version uint64) {
	t.Helper()
	rec, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	if rec.Key != key || string(rec.Value) != value || rec.Version != version {
		t.Fatalf("Get(%q) = {Key %q, Value %q, Version %d}, want {%q, %q, %d}",
			key, rec.Key, rec.Value, rec.Version, key, value, version)
	}
}

func wantNotFound(t *testing.T, s store.Store, key string) {
	t.Helper()
	rec, err := s.Get(t.Context(), key)
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get(%q) = (%+v, %v), want ErrNotFound", key, rec, err)
	}
}

func testGetMissing(t *testing.T, s store.Store) {
	wantNotFound(t, s, "missing")
	wantNotFound(t, s, "a/b/c")
}

func testCreateOnly(t *testing.T, s store.Store) {
	mustPut(t, s, "creds/one", "first", 0)
	// A second create must not overwrite the first writer's value.
	_, err := s.Put(t.Context(), "creds/one", []byte("second"), 0)
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("second create-only Put: err = %v, want ErrConflict", err)
	}
	wantRecord(t, s, "creds/one", "first", 1)
}

func testVersionsGrowByOne(t *testing.T, s store.Store) {
	for want := uint64(1); want <= 5; want++ {
		value := "value-" + strconv.FormatUint(want, 10)
		mustPut(t, s, "k", value, want-1)
		wantRecord(t, s, "k", value, want)
	}
	// Versions are per key: another key starts at 1.
	mustPut(t, s, "other", "x", 0)
	wantRecord(t, s, "k", "value-5", 5)
}

func testCheckAndSetMismatch(t *testing.T, s store.Store) {
	mustPut(t, s, "k", "v1", 0)
	mustPut(t, s, "k", "v2", 1)
	mustPut(t, s, "k", "v3", 2)
	tests := []struct {
		name     string
		key      string
		expected uint64
	}{
		{"stale version", "k", 2},
		{"older version", "k", 1},
		{"future version", "k", 4},
		{"create over existing", "k", 0},
		{"update of missing key", "absent", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Put(t.Context(), tt.key, []byte("lost"), tt.expected)
			if !errors.Is(err, store.ErrConflict) {
				t.Fatalf("Put(%q, expected %d): err = %v, want ErrConflict", tt.key, tt.expected, err)
			}
			wantRecord(t, s, "k", "v3", 3)
			wantNotFound(t, s, "absent")
		})
	}
}

func testDelete(t *testing.T, s store.Store) {
	mustPut(t, s, "fam/a", "old-1", 0)
	mustPut(t, s, "fam/a", "old-2", 1)
	mustPut(t, s, "fam/b", "keep", 0)
	if err := s.Delete(t.Context(), "fam/a"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wantNotFound(t, s, "fam/a")
	// The old history is gone: its version no longer matches anything.
	if _, err := s.Put(t.Context(), "fam/a", []byte("stale"), 2); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Put with the deleted record's version: err = %v, want ErrConflict", err)
	}
	mustPut(t, s, "fam/a", "fresh", 0)
	wantRecord(t, s, "fam/a", "fresh", 1)
	wantRecord(t, s, "fam/b", "keep", 1)
	// Deleting twice is fine and leaves the other key alone.
	for range 2 {
		if err := s.Delete(t.Context(), "fam/a"); err != nil {
			t.Fatalf("Delete: %v", err)
		}
	}
	wantNotFound(t, s, "fam/a")
	wantRecord(t, s, "fam/b", "keep", 1)
	keys, err := s.List(t.Context(), "fam/")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if !slices.Equal(keys, []string{"fam/b"}) {
		t.Fatalf("List after Delete = %q, want [fam/b]", keys)
	}
}

func testDeleteMissing(t *testing.T, s store.Store) {
	if err := s.Delete(t.Context(), "never/written"); err != nil {
		t.Fatalf("Delete of missing key: %v", err)
	}
	wantNotFound(t, s, "never/written")
}

func testList(t *testing.T, s store.Store) {
	// Written out of order; the byte order of the grammar's characters is
	// '-' < '.' < '/' < digits < upper case < '_' < lower case.
	for _, k := range []string{
		"a/b0", "a/b/c", "a/b", "a/b.x", "a/Z", "a/_u", "a/-dash", "a/1",
		"a/b/c/d", "ab/x", "a-x/y", "a", "b/1", "a/b/e",
	} {
		mustPut(t, s, k, "v:"+k, 0)
	}
	tests := []struct {
		prefix string
		want   []string
	}{
		{"a/", []string{"a/-dash", "a/1", "a/Z", "a/_u", "a/b", "a/b.x", "a/b0"}},
		{"a/b/", []string{"a/b/c", "a/b/e"}},
		{"a/b/c/", []string{"a/b/c/d"}},
		{"ab/", []string{"ab/x"}},
		{"b/", []string{"b/1"}},
		{"nothing/", nil},
		{"a/1/", nil},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			got, err := s.List(t.Context(), tt.prefix)
			if err != nil {
				t.Fatalf("List(%q): %v", tt.prefix, err)
			}
			if len(got) != len(tt.want) || (len(got) > 0 && !slices.Equal(got, tt.want)) {
				t.Fatalf("List(%q) = %q, want %q", tt.prefix, got, tt.want)
			}
			if !slices.IsSorted(got) {
				t.Fatalf("List(%q) = %q, not sorted", tt.prefix, got)
			}
		})
	}
}

// testListPage pages through the keys of testList's layout with every
// limit and checks that the pages, joined, are List's answer; and that
// `after` is exclusive and need not be a key.
func testListPage(t *testing.T, s store.Store) {
	for _, k := range []string{
		"a/b0", "a/b/c", "a/b", "a/b.x", "a/Z", "a/_u", "a/-dash", "a/1",
		"a/b/c/d", "ab/x", "a-x/y", "a", "b/1", "a/b/e",
	} {
		mustPut(t, s, k, "v:"+k, 0)
	}
	ctx := t.Context()
	for _, prefix := range []string{"a/", "a/b/", "a/b/c/", "ab/", "nothing/", "a/1/"} {
		want, err := s.List(ctx, prefix)
		if err != nil {
			t.Fatalf("List(%q): %v", prefix, err)
		}
		for limit := 1; limit <= len(want)+1; limit++ {
			var got []string
			after := ""
			for range len(want) + 2 {
				page, more, err := s.ListPage(ctx, prefix, after, limit)
				if err != nil {
					t.Fatalf("ListPage(%q, %q, %d): %v", prefix, after, limit, err)
				}
				if len(page) > limit || (more && len(page) != limit) {
					t.Fatalf("ListPage(%q, %q, %d) = %q, more %v: too long, or short with more", prefix, after, limit, page, more)
				}
				got = append(got, page...)
				if !more {
					break
				}
				after = page[len(page)-1]
			}
			if !slices.Equal(got, want) {
				t.Fatalf("pages of %d under %q = %q, want List's %q", limit, prefix, got, want)
			}
		}
	}
	tests := []struct {
		after string
		limit int
		want  []string
		more  bool
	}{
		{"", 2, []string{"a/-dash", "a/1"}, true},
		{"a/", 2, []string{"a/-dash", "a/1"}, true},
		{"a", 1, []string{"a/-dash"}, true},
		{"a/1", 2, []string{"a/Z", "a/_u"}, true},
		{"a/10", 2, []string{"a/Z", "a/_u"}, true}, // not a key
		{"a/b/c", 10, []string{"a/b0"}, false},     // '.' < '/' < '0'
		{"a/b/", 10, []string{"a/b0"}, false},
		{"a/b", 10, []string{"a/b.x", "a/b0"}, false},
		{"a/b.x", 1, []string{"a/b0"}, false},
		{"a/b0", 5, nil, false},
		{"a/zzz", 5, nil, false},
		{"b", 5, nil, false},
	}
	for _, tt := range tests {
		page, more, err := s.ListPage(ctx, "a/", tt.after, tt.limit)
		if err != nil {
			t.Fatalf("ListPage(a/, %q, %d): %v", tt.after, tt.limit, err)
		}
		if !slices.Equal(page, tt.want) || more != tt.more {
			t.Errorf("ListPage(a/, %q, %d) = %q, more %v; want %q, more %v", tt.after, tt.limit, page, more, tt.want, tt.more)
		}
	}
}

func testListPageInvalid(t *testing.T, s store.Store) {
	mustPut(t, s, "a/b", "v", 0)
	for _, prefix := range []string{"", "a", "a//", "../", "a b/"} {
		if keys, _, err := s.ListPage(t.Context(), prefix, "", 10); !errors.Is(err, store.ErrInvalidKey) {
			t.Errorf("ListPage(%q) = (%q, %v), want ErrInvalidKey", prefix, keys, err)
		}
	}
	for _, limit := range []int{0, -1} {
		if keys, _, err := s.ListPage(t.Context(), "a/", "", limit); !errors.Is(err, store.ErrInvalidLimit) {
			t.Errorf("ListPage(a/, limit %d) = (%q, %v), want ErrInvalidLimit", limit, keys, err)
		}
	}
}

// testListPageSeesOwnWrites: a page shows the keys this store created and
// not those it deleted, also once a listing has been read (a backend that
// keeps a listing must keep it current with its own writes).
func testListPageSeesOwnWrites(t *testing.T, s store.Store) {
	ctx := t.Context()
	page := func() []string {
		t.Helper()
		keys, _, err := s.ListPage(ctx, "d/", "", 100)
		if err != nil {
			t.Fatalf("ListPage: %v", err)
		}
		return keys
	}
	if got := page(); len(got) != 0 {
		t.Fatalf("empty store: page %q", got)
	}
	mustPut(t, s, "d/k2", "v", 0)
	mustPut(t, s, "d/k1", "v", 0)
	mustPut(t, s, "d/k3", "v", 0)
	if got := page(); !slices.Equal(got, []string{"d/k1", "d/k2", "d/k3"}) {
		t.Fatalf("after three creations: page %q", got)
	}
	if err := s.Delete(ctx, "d/k2"); err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, "d/k1", "v2", 1) // an update is no new key
	if got := page(); !slices.Equal(got, []string{"d/k1", "d/k3"}) {
		t.Fatalf("after deleting d/k2: page %q", got)
	}
	mustPut(t, s, "d/k2", "again", 0)
	if got := page(); !slices.Equal(got, []string{"d/k1", "d/k2", "d/k3"}) {
		t.Fatalf("after creating d/k2 again: page %q", got)
	}
}

func testListInvalidPrefix(t *testing.T, s store.Store) {
	mustPut(t, s, "a/b", "v", 0)
	for _, prefix := range []string{
		"", "/", "a", "a/b", "a//", "/a/", "../", "a/../", "./", "a/./",
		"a\x00/", "a\n/", "a b/", "a\\b/", strings.Repeat("a", store.MaxKeyLen+1) + "/",
	} {
		t.Run(fmt.Sprintf("%q", prefix), func(t *testing.T) {
			keys, err := s.List(t.Context(), prefix)
			if !errors.Is(err, store.ErrInvalidKey) {
				t.Fatalf("List(%q) = (%q, %v), want ErrInvalidKey", prefix, keys, err)
			}
		})
	}
}

func invalidKeys() []string {
	return []string{
		"",
		"..",
		".",
		"a//b",
		"a/../b",
		"a/./b",
		"/leading",
		"trailing/",
		"a\x00b",
		"a\nb",
		"a\x7fb",
		"tab\tkey",
		"sp ace",
		"back\\slash",
		"colon:key",
		"ünïcode",
		strings.Repeat("a", store.MaxKeyLen+1),
	}
}

func testInvalidKeys(t *testing.T, s store.Store) {
	for _, key := range invalidKeys() {
		t.Run(fmt.Sprintf("%.40q", key), func(t *testing.T) {
			ctx := t.Context()
			if _, err := s.Get(ctx, key); !errors.Is(err, store.ErrInvalidKey) {
				t.Errorf("Get: err = %v, want ErrInvalidKey", err)
			}
			if _, err := s.Put(ctx, key, []byte("v"), 0); !errors.Is(err, store.ErrInvalidKey) {
				t.Errorf("Put: err = %v, want ErrInvalidKey", err)
			}
			if err := s.Delete(ctx, key); !errors.Is(err, store.ErrInvalidKey) {
				t.Errorf("Delete: err = %v, want ErrInvalidKey", err)
			}
			if _, err := s.List(ctx, key+"/"); !errors.Is(err, store.ErrInvalidKey) {
				t.Errorf("List(key+\"/\"): err = %v, want ErrInvalidKey", err)
			}
		})
	}
}

func testMaxKeyLen(t *testing.T, s store.Store) {
	key := strings.Repeat("k", store.MaxKeyLen)
	mustPut(t, s, key, "long key", 0)
	wantRecord(t, s, key, "long key", 1)
	if err := s.Delete(t.Context(), key); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wantNotFound(t, s, key)
}

func testValuesAreCopied(t *testing.T, s store.Store) {
	in := []byte("original")
	if _, err := s.Put(t.Context(), "k", in, 0); err != nil {
		t.Fatalf("Put: %v", err)
	}
	copy(in, "CHANGED!")
	wantRecord(t, s, "k", "original", 1)

	rec, err := s.Get(t.Context(), "k")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	copy(rec.Value, "CHANGED!")
	wantRecord(t, s, "k", "original", 1)
}

func testEmptyValue(t *testing.T, s store.Store) {
	for i, value := range [][]byte{nil, {}} {
		key := fmt.Sprintf("empty/%d", i)
		if _, err := s.Put(t.Context(), key, value, 0); err != nil {
			t.Fatalf("Put(%q, empty): %v", key, err)
		}
		rec, err := s.Get(t.Context(), key)
		if err != nil {
			t.Fatalf("Get(%q): %v", key, err)
		}
		if len(rec.Value) != 0 || rec.Version != 1 {
			t.Fatalf("Get(%q) = {Value %q, Version %d}, want empty value at version 1", key, rec.Value, rec.Version)
		}
	}
	// An empty value still makes the key exist.
	if _, err := s.Put(t.Context(), "empty/0", nil, 0); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("create over an empty value: err = %v, want ErrConflict", err)
	}
}

func testLargeValue(t *testing.T, s store.Store) {
	const size = store.MaxValueLen
	value := make([]byte, size)
	for i := range value {
		value[i] = byte(i*7 + i>>8)
	}
	if _, err := s.Put(t.Context(), "big", value, 0); err != nil {
		t.Fatalf("Put MaxValueLen bytes: %v", err)
	}
	rec, err := s.Get(t.Context(), "big")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if !bytes.Equal(rec.Value, value) {
		t.Fatalf("Get returned %d bytes, not the %d written", len(rec.Value), size)
	}
	value[0]++
	if _, err := s.Put(t.Context(), "big", value, 1); err != nil {
		t.Fatalf("update MaxValueLen bytes: %v", err)
	}
	rec, err = s.Get(t.Context(), "big")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if !bytes.Equal(rec.Value, value) || rec.Version != 2 {
		t.Fatalf("after update: %d bytes at version %d, want the updated %d bytes at version 2", len(rec.Value), rec.Version, size)
	}
}

func testCancelledContext(t *testing.T, s store.Store) {
	mustPut(t, s, "dir/kept", "v1", 0)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()

	if _, err := s.Put(ctx, "dir/new", []byte("x"), 0); !errors.Is(err, context.Canceled) {
		t.Errorf("Put(new) with cancelled ctx: err = %v, want context.Canceled", err)
	}
	if _, err := s.Put(ctx, "dir/kept", []byte("x"), 1); !errors.Is(err, context.Canceled) {
		t.Errorf("Put(update) with cancelled ctx: err = %v, want context.Canceled", err)
	}
	if err := s.Delete(ctx, "dir/kept"); !errors.Is(err, context.Canceled) {
		t.Errorf("Delete with cancelled ctx: err = %v, want context.Canceled", err)
	}
	if _, err := s.Get(ctx, "dir/kept"); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with cancelled ctx: err = %v, want context.Canceled", err)
	}
	if _, err := s.List(ctx, "dir/"); !errors.Is(err, context.Canceled) {
		t.Errorf("List with cancelled ctx: err = %v, want context.Canceled", err)
	}
	if _, _, err := s.ListPage(ctx, "dir/", "", 10); !errors.Is(err, context.Canceled) {
		t.Errorf("ListPage with cancelled ctx: err = %v, want context.Canceled", err)
	}
	// Nothing was written.
	wantNotFound(t, s, "dir/new")
	wantRecord(t, s, "dir/kept", "v1", 1)
}

// testConcurrentIncrements runs read-modify-write loops from several
// goroutines on one counter: with check-and-set, no increment is lost.
func testConcurrentIncrements(t *testing.T, s store.Store) {
	const (
		workers     = 8
		increments  = 50
		maxAttempts = 10 * workers * increments // bound, never reached by a correct store
		key         = "counter"
	)
	mustPut(t, s, key, "0", 0)
	ctx := t.Context()

	increment := func() error {
		for range maxAttempts {
			rec, err := s.Get(ctx, key)
			if err != nil {
				return fmt.Errorf("get: %w", err)
			}
			n, err := strconv.Atoi(string(rec.Value))
			if err != nil {
				return fmt.Errorf("counter value %q: %w", rec.Value, err)
			}
			_, err = s.Put(ctx, key, []byte(strconv.Itoa(n+1)), rec.Version)
			if err == nil {
				return nil
			}
			if !errors.Is(err, store.ErrConflict) {
				return fmt.Errorf("put: %w", err)
			}
		}
		return fmt.Errorf("no successful write in %d attempts", maxAttempts)
	}

	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for range increments {
				if err := increment(); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	total := workers * increments
	wantRecord(t, s, key, strconv.Itoa(total), uint64(total)+1)
}

// Seed writes the records records(i) returns for i in [0, n) into s, each
// created (expected version 0), from 32 writers at once so that a store
// with group commit shares its fsyncs among them: fixtures of 100,000
// records in seconds. It returns the first error.
func Seed(ctx context.Context, s store.Store, n int, records func(i int) ([]store.Record, error)) error {
	const writers = 32
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		errs = make(chan error, writers)
	)
	for range writers {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				recs, err := records(i)
				for _, r := range recs {
					if err != nil {
						break
					}
					_, err = s.Put(ctx, r.Key, r.Value, 0)
				}
				if err != nil {
					errs <- fmt.Errorf("storetest: seed record %d: %w", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}
