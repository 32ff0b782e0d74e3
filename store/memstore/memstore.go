// Package memstore is an in-memory store.Store for tests and for wiring
// examples. It keeps nothing across restarts.
package memstore

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/rotavault/rotavault/store"
)

var _ store.Store = (*Store)(nil)

// Store is an in-memory store.Store. It is safe for concurrent use; its zero
// value is not usable, call New. Values are copied on the way in and out, so
// callers never share memory with the store.
type Store struct {
	mu      sync.Mutex
	records map[string]entry
}

type entry struct {
	value   []byte
	version uint64
}

// New returns an empty Store.
func New() *Store {
	return &Store{records: make(map[string]entry)}
}

// Get returns the current record of key. Errors: store.ErrInvalidKey,
// store.ErrNotFound, or ctx.Err() wrapped.
func (s *Store) Get(ctx context.Context, key string) (store.Record, error) {
	if err := store.ValidateKey(key); err != nil {
		return store.Record{}, fmt.Errorf("memstore: get: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return store.Record{}, fmt.Errorf("memstore: get %q: %w", key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.records[key]
	if !ok {
		return store.Record{}, fmt.Errorf("memstore: get %q: %w", key, store.ErrNotFound)
	}
	return store.Record{Key: key, Value: bytes.Clone(e.value), Version: e.version}, nil
}

// Put writes value if the key's version equals expectedVersion (0: the key
// must be absent) and returns the new version. Errors: store.ErrInvalidKey,
// store.ErrConflict, or ctx.Err() wrapped; on error nothing changes.
func (s *Store) Put(ctx context.Context, key string, value []byte, expectedVersion uint64) (uint64, error) {
	if err := store.ValidateKey(key); err != nil {
		return 0, fmt.Errorf("memstore: put: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("memstore: put %q: %w", key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.records[key].version // 0 when absent
	if cur != expectedVersion {
		return 0, fmt.Errorf("memstore: put %q: expected version %d, found %d: %w", key, expectedVersion, cur, store.ErrConflict)
	}
	// A nil value would come back as nil; keep "empty" distinct from
	// "absent" for callers that compare with bytes.Equal or len alike.
	v := bytes.Clone(value)
	if v == nil {
		v = []byte{}
	}
	s.records[key] = entry{value: v, version: cur + 1}
	return cur + 1, nil
}

// Delete removes key and its history. Deleting a missing key is not an
// error. Errors: store.ErrInvalidKey or ctx.Err() wrapped.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := store.ValidateKey(key); err != nil {
		return fmt.Errorf("memstore: delete: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memstore: delete %q: %w", key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.records, key)
	return nil
}

// List returns the sorted keys directly under prefix. Errors:
// store.ErrInvalidKey or ctx.Err() wrapped.
func (s *Store) List(ctx context.Context, prefix string) ([]string, error) {
	if err := store.ValidatePrefix(prefix); err != nil {
		return nil, fmt.Errorf("memstore: list: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("memstore: list %q: %w", prefix, err)
	}
	s.mu.Lock()
	keys := make([]string, 0)
	for k := range s.records {
		rest, ok := strings.CutPrefix(k, prefix)
		if ok && !strings.Contains(rest, "/") {
			keys = append(keys, k)
		}
	}
	s.mu.Unlock()
	sort.Strings(keys)
	return keys, nil
}

// ListPage answers from a full listing: the fake favours being obviously
// right over being fast. Errors: store.ErrInvalidKey, store.ErrInvalidLimit
// or ctx.Err() wrapped.
func (s *Store) ListPage(ctx context.Context, prefix, after string, limit int) ([]string, bool, error) {
	if err := store.ValidatePage(prefix, limit); err != nil {
		return nil, false, fmt.Errorf("memstore: list page: %w", err)
	}
	keys, err := s.List(ctx, prefix)
	if err != nil {
		return nil, false, err
	}
	page, more := store.PageOf(keys, after, limit)
	return page, more, nil
}

// ListingHints takes no hints (nil): a page lists every key.
func (s *Store) ListingHints(prefix string) func(string, bool) { return store.NoHints(prefix) }
