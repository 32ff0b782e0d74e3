// Package store defines the contract every Rotavault storage backend meets:
// a key/value store of opaque byte values with per-key versions and
// check-and-set writes. Backends (the embedded store, Vault) know nothing of
// credentials or rotation; the rotation logic encodes its own records.
//
// The contract is checked by one suite, storetest.Run, against every backend.
package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Errors returned by every Store. Backends wrap them with %w; callers check
// them with errors.Is.
var (
	// ErrNotFound: the key holds no record.
	ErrNotFound = errors.New("store: not found")
	// ErrConflict: a check-and-set write found a version other than the
	// expected one. Re-read and decide again: another writer may already have
	// done the work.
	ErrConflict = errors.New("store: version conflict")
	// ErrInvalidKey: the key does not follow the key grammar (see ValidateKey).
	ErrInvalidKey = errors.New("store: invalid key")
	// ErrInvalidLimit: a ListPage limit below 1.
	ErrInvalidLimit = errors.New("store: invalid page limit")
)

// Record is one stored value and its version.
type Record struct {
	Key   string
	Value []byte
	// Version is 1 for a new key and grows by one with every write. It is the
	// fencing token for check-and-set.
	Version uint64
}

// Store is a versioned key/value store with check-and-set writes.
// Implementations are safe for concurrent use, also across processes sharing
// the same backend where the backend allows that (Vault).
type Store interface {
	// Get returns the current record of key, or ErrNotFound.
	Get(ctx context.Context, key string) (Record, error)
	// Put writes value if the key's current version equals expectedVersion,
	// and returns the new version. An expectedVersion of 0 means "create only":
	// it succeeds only when the key holds no record. A mismatch is ErrConflict
	// and changes nothing.
	Put(ctx context.Context, key string, value []byte, expectedVersion uint64) (uint64, error)
	// Delete destroys the key's record and every earlier version of it. It
	// is not a soft delete. Deleting a missing key is not an error. A later
	// Put with expectedVersion 0 creates the key afresh.
	Delete(ctx context.Context, key string) error
	// List returns, in ascending byte order, the keys of the records directly
	// under prefix, which must end in "/" (no deeper levels).
	List(ctx context.Context, prefix string) ([]string, error)
	// ListPage returns, in ascending byte order, at most limit keys of the
	// records directly under prefix (as List) that sort after `after` (a
	// full key, present or not, or "" to start at the beginning), and
	// whether more follow. Its cost grows with limit, not with the number
	// of keys under prefix. This process's own writes show at once; on a
	// backend several processes share, another process's creations and
	// deletions may show late, by at most the backend's stated listing lag
	// (none for the embedded store; for Vault, whose LIST cannot page,
	// until hinted in a folder given hints (ListingHints), else
	// vaultstore.Config.ListRefresh). Errors: ErrInvalidKey (prefix),
	// ErrInvalidLimit (limit < 1), or ctx.Err() wrapped.
	ListPage(ctx context.Context, prefix, after string, limit int) (keys []string, more bool, err error)
	// ListingHints declares that the caller will tell the store, through
	// the function returned, of every creation (present) and deletion of a
	// key directly under prefix that another process makes, once it is
	// made, as it learns of them by means other than the store (the
	// broker's notice log). A backend that keeps a folder's listing in
	// memory for ListPage (Vault's) then keeps it current from the hints
	// instead of listing the backend again before a page; a hint may come
	// late or twice, and a deletion hinted must be one the caller saw done
	// (the key absent), for the store believes it. A backend whose pages
	// read the keys themselves returns nil: hints need not be gathered.
	ListingHints(prefix string) (hint func(key string, present bool))
}

// NoHints is ListingHints of a backend whose pages need no hints.
func NoHints(string) func(string, bool) { return nil }

// MaxValueLen is the largest value every backend must store. Rotavault's
// records are a few KiB; Vault refuses entries much over 512 KiB (after
// base64), so the contract promises no more.
const MaxValueLen = 256 << 10

// MaxKeyLen bounds a key's length in bytes.
const MaxKeyLen = 512

// ValidateKey checks the key grammar shared by all backends: segments of
// [A-Za-z0-9._-], separated by single "/", none empty, "." or "..", at most
// MaxKeyLen bytes. The grammar keeps every key inside a backend's configured
// prefix (no traversal, no separators of other systems, no control bytes).
func ValidateKey(key string) error {
	if key == "" || len(key) > MaxKeyLen {
		return fmt.Errorf("%w: length %d", ErrInvalidKey, len(key))
	}
	for _, seg := range strings.Split(key, "/") {
		if err := validateSegment(seg); err != nil {
			return fmt.Errorf("%w: %q: %v", ErrInvalidKey, key, err)
		}
	}
	return nil
}

// ValidatePrefix checks a List prefix: a valid key followed by "/".
func ValidatePrefix(prefix string) error {
	trimmed, ok := strings.CutSuffix(prefix, "/")
	if !ok {
		return fmt.Errorf("%w: prefix %q must end in /", ErrInvalidKey, prefix)
	}
	return ValidateKey(trimmed)
}

// ValidatePage checks ListPage's prefix and limit.
func ValidatePage(prefix string, limit int) error {
	if err := ValidatePrefix(prefix); err != nil {
		return err
	}
	if limit < 1 {
		return fmt.Errorf("%w: %d", ErrInvalidLimit, limit)
	}
	return nil
}

// PageOf answers ListPage from keys, the sorted keys directly under one
// prefix: those after `after`, at most limit, and whether more follow. The
// page is a copy; keys stay the caller's.
func PageOf(keys []string, after string, limit int) ([]string, bool) {
	i, found := slices.BinarySearch(keys, after)
	if found {
		i++
	}
	end := i + min(limit, len(keys)-i)
	return slices.Clone(keys[i:end]), end < len(keys)
}

func validateSegment(seg string) error {
	if seg == "" || seg == "." || seg == ".." {
		return errors.New("empty or dot segment")
	}
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return fmt.Errorf("byte 0x%02x not allowed", c)
		}
	}
	return nil
}

// ResultOf names err's class for metrics and traces, which must not carry a
// backend's error text: "ok", "not_found", "conflict", "cancelled" (the
// caller's context ended) or "error".
func ResultOf(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrNotFound):
		return "not_found"
	case errors.Is(err, ErrConflict):
		return "conflict"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "cancelled"
	default:
		return "error"
	}
}
