package boltstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/rotavault/rotavault/internal/fsutil"
	"github.com/rotavault/rotavault/store"
)

var _ store.Store = (*Store)(nil)

const (
	// storeFormatV1 is the file layout: the two buckets below and the
	// metadata keys.
	storeFormatV1 = 1

	recordsBucket = "records"
	metaBucket    = "meta"

	metaFormat   = "format"
	metaKeyCheck = "keycheck"

	// keyCheckValue is sealed under the store's key in the metadata bucket,
	// so Open can recognise a wrong key even in a store without records.
	keyCheckValue = "rotavault boltstore key check"
)

// Store is a store.Store in one bbolt file. It is safe for concurrent use by
// many goroutines; the file is locked, so only one Store (in one process)
// has it open at a time. Writes are durable when they return: every commit
// is fsynced, and concurrent Puts and Deletes share commits (groupCommit).
// After Close, every method returns ErrClosed.
type Store struct {
	db      *bolt.DB
	path    string
	log     *slog.Logger
	commits *groupCommit

	keys atomic.Pointer[keyring]
	// rotateMu is held shared by Put and exclusively by RotateKey. Put
	// loads the keyring inside its bbolt transaction, so it seals under the
	// new key as soon as a rotation begins; the lock keeps it from doing so
	// while a rotation may still fail and be rolled back, which would leave
	// a record under a key the file does not know.
	rotateMu sync.RWMutex

	// stopRelease stops the periodic release of mapped pages; Close waits
	// for releaseDone. Both nil when it does not run.
	stopRelease chan struct{}
	releaseDone chan struct{}
}

// Open opens the store at path, creating the file (mode 0600) if it does
// not exist; the directory must exist. New records are sealed under key;
// records under key or any of opts.PreviousKeys can be read.
//
// Open checks the file before returning, so a misconfigured key fails here
// rather than at the first request. Errors:
//   - ErrLocked: another process (a running server?) holds the file for
//     longer than opts.OpenTimeout;
//   - ErrUnknownKey: the file, or some record in it, is sealed under a key
//     that is neither key nor a previous key;
//   - ErrCorrupt: the file is not a store or its metadata is damaged;
//   - ErrUnsupportedFormat: the file was written by a newer Rotavault.
func Open(path string, key Key, opts Options) (*Store, error) {
	kr, err := newKeyring(key, opts.PreviousKeys)
	if err != nil {
		return nil, fmt.Errorf("boltstore: open %s: %w", path, err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	timeout := opts.OpenTimeout
	if timeout <= 0 {
		timeout = defaultOpenTimeout
	}
	_, statErr := os.Stat(path)
	created := errors.Is(statErr, fs.ErrNotExist)
	// NoSync stays false: each commit is fsynced, so an acknowledged
	// rotation survives a crash. Losing it would hand out a refresh token
	// the provider has already replaced.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	if err != nil {
		return nil, openError(path, timeout, err)
	}
	s := &Store{db: db, path: path, log: log, commits: &groupCommit{db: db}}
	s.keys.Store(kr)
	if err := db.Update(s.initFile); err != nil {
		db.Close()
		return nil, fmt.Errorf("boltstore: open %s: %w", path, err)
	}
	if created {
		// bbolt fsyncs the file, not the directory entry that makes a new
		// file findable after a power loss.
		if err := fsutil.SyncDir(filepath.Dir(path)); err != nil {
			db.Close()
			return nil, fmt.Errorf("boltstore: open %s: %w", path, err)
		}
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("boltstore: store file is accessible to group or others; values are encrypted, but chmod 600 it",
			"path", path, "mode", fmt.Sprintf("%04o", fi.Mode().Perm()))
	}
	if every := opts.ReleaseMappedEvery; every >= 0 {
		if every == 0 {
			every = defaultReleaseMappedEvery
		}
		s.stopRelease, s.releaseDone = make(chan struct{}), make(chan struct{})
		go s.releaseMappedLoop(every, s.stopRelease, s.releaseDone)
	}
	log.Info("boltstore: opened", "path", path, "key_id", key.ID(), "previous_keys", len(opts.PreviousKeys))
	return s, nil
}

func openError(path string, timeout time.Duration, err error) error {
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return fmt.Errorf("boltstore: open %s: the store is in use by another process (is a server running?); gave up after %s: %w",
			path, timeout, ErrLocked)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum):
		return fmt.Errorf("boltstore: open %s: not a readable store file: %w: %w", path, ErrCorrupt, err)
	case errors.Is(err, berrors.ErrVersionMismatch):
		return fmt.Errorf("boltstore: open %s: %w: %w", path, ErrUnsupportedFormat, err)
	default:
		return fmt.Errorf("boltstore: open %s: %w", path, err)
	}
}

// initFile creates the buckets of a new file, or checks an existing one:
// its format, the key check, and the key id of every record.
func (s *Store) initFile(tx *bolt.Tx) error {
	kr := s.keys.Load()
	meta := tx.Bucket([]byte(metaBucket))
	records := tx.Bucket([]byte(recordsBucket))
	if meta == nil {
		if records != nil {
			return fmt.Errorf("records bucket without metadata: %w", ErrCorrupt)
		}
		return createFile(tx, kr)
	}
	if records == nil {
		return fmt.Errorf("metadata without records bucket: %w", ErrCorrupt)
	}

	switch format := meta.Get([]byte(metaFormat)); {
	case len(format) != 1 || format[0] == 0:
		return fmt.Errorf("bad store format metadata: %w", ErrCorrupt)
	case format[0] > storeFormatV1:
		return fmt.Errorf("store format %d is newer than %d: %w", format[0], storeFormatV1, ErrUnsupportedFormat)
	}

	check := meta.Get([]byte(metaKeyCheck))
	if check == nil {
		return fmt.Errorf("no key check in metadata: %w", ErrCorrupt)
	}
	_, v, err := kr.open(kindKeyCheck, metaKeyCheck, check)
	if err != nil {
		return fmt.Errorf("key check: %w", err)
	}
	if string(v) != keyCheckValue {
		return fmt.Errorf("key check holds an unexpected value: %w", ErrCorrupt)
	}
	return s.checkRecords(records, kr)
}

func createFile(tx *bolt.Tx, kr *keyring) error {
	meta, err := tx.CreateBucket([]byte(metaBucket))
	if err != nil {
		return err
	}
	if _, err := tx.CreateBucket([]byte(recordsBucket)); err != nil {
		return err
	}
	if err := meta.Put([]byte(metaFormat), []byte{storeFormatV1}); err != nil {
		return err
	}
	return meta.Put([]byte(metaKeyCheck), kr.current.seal(kindKeyCheck, metaKeyCheck, 1, []byte(keyCheckValue)))
}

// checkRecords reads every record header (no decryption) so that a key
// missing from the configuration fails Open instead of some later request,
// and decrypts the first record as a spot check of the whole path.
func (s *Store) checkRecords(records *bolt.Bucket, kr *keyring) error {
	var (
		total, corrupt int
		perKey         = map[[keyIDSize]byte]int{}
		unknown        = map[string]int{}
		spotChecked    bool
		spotErr        error
	)
	err := records.ForEach(func(k, v []byte) error {
		total++
		r, err := decodeRecord(v)
		if err != nil {
			if errors.Is(err, ErrUnsupportedFormat) {
				return fmt.Errorf("record %q: %w", k, err)
			}
			corrupt++
			return nil
		}
		if _, ok := kr.byID[r.KeyID]; !ok {
			unknown[r.KeyIDString()]++
			return nil
		}
		perKey[r.KeyID]++
		if !spotChecked {
			spotChecked = true
			_, _, spotErr = kr.open(kindRecord, string(k), v)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(unknown) > 0 {
		return fmt.Errorf("records sealed under key ids %v (id:count), not among the configured keys %v (current %s): %w",
			unknown, kr.ids(), kr.current.idString(), ErrUnknownKey)
	}
	if n := total - perKey[kr.current.id] - corrupt; n > 0 {
		s.log.Warn("boltstore: records sealed under previous keys; rotate the key before dropping them from the configuration",
			"path", s.path, "records", n, "total", total)
	}
	if corrupt > 0 || spotErr != nil {
		// One damaged record must not keep the node from serving the
		// others; its own Get reports ErrCorrupt.
		s.log.Error("boltstore: damaged records found", "path", s.path, "undecodable", corrupt, "spot_check_error", spotErr)
	}
	return nil
}

// Get returns the current record of key. Errors: store.ErrInvalidKey,
// store.ErrNotFound, ErrCorrupt (the record fails authentication),
// ErrUnknownKey, or ctx.Err() wrapped.
func (s *Store) Get(ctx context.Context, key string) (store.Record, error) {
	if err := store.ValidateKey(key); err != nil {
		return store.Record{}, fmt.Errorf("boltstore: get: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return store.Record{}, fmt.Errorf("boltstore: get %q: %w", key, err)
	}
	var rec store.Record
	err := s.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket([]byte(recordsBucket)).Get([]byte(key))
		if raw == nil {
			return store.ErrNotFound
		}
		// open copies the value out of the mmap; raw is not used after
		// the transaction.
		r, value, err := s.keys.Load().open(kindRecord, key, raw)
		if err != nil {
			return err
		}
		rec = store.Record{Key: key, Value: value, Version: r.Version}
		return nil
	})
	if err != nil {
		return store.Record{}, fmt.Errorf("boltstore: get %q: %w", key, closedErr(err))
	}
	return rec, nil
}

// Put seals and writes value if the key's version equals expectedVersion (0:
// the key must be absent) and returns the new version once it is on disk.
// Concurrent writes share a commit; a conflict fails this Put alone.
// Errors: store.ErrInvalidKey, store.ErrConflict, ErrCorrupt (the current
// record does not decode), or ctx.Err() wrapped; on error nothing changes.
func (s *Store) Put(ctx context.Context, key string, value []byte, expectedVersion uint64) (uint64, error) {
	if err := store.ValidateKey(key); err != nil {
		return 0, fmt.Errorf("boltstore: put: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("boltstore: put %q: %w", key, err)
	}
	s.rotateMu.RLock()
	defer s.rotateMu.RUnlock()
	var version uint64
	err := s.commits.write(func(tx *bolt.Tx) error {
		// The wait for the commit may have outlived the caller.
		if err := ctx.Err(); err != nil {
			return err
		}
		b := tx.Bucket([]byte(recordsBucket))
		var current uint64
		if raw := b.Get([]byte(key)); raw != nil {
			r, err := decodeRecord(raw)
			if err != nil {
				return err
			}
			current = r.Version
		}
		if current != expectedVersion {
			return fmt.Errorf("expected version %d, found %d: %w", expectedVersion, current, store.ErrConflict)
		}
		if current == math.MaxUint64 {
			return fmt.Errorf("version %d cannot grow", current)
		}
		version = current + 1
		// seal allocates a new slice, so the caller may reuse value at
		// once, and bbolt holds a slice nobody else writes.
		return b.Put([]byte(key), s.keys.Load().current.seal(kindRecord, key, version, value))
	})
	if err != nil {
		return 0, fmt.Errorf("boltstore: put %q: %w", key, closedErr(err))
	}
	return version, nil
}

// Delete removes key's record once and for all; deleting a missing key is
// not an error. Errors: store.ErrInvalidKey or ctx.Err() wrapped.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := store.ValidateKey(key); err != nil {
		return fmt.Errorf("boltstore: delete: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("boltstore: delete %q: %w", key, err)
	}
	err := s.commits.write(func(tx *bolt.Tx) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		return tx.Bucket([]byte(recordsBucket)).Delete([]byte(key))
	})
	if err != nil {
		return fmt.Errorf("boltstore: delete %q: %w", key, closedErr(err))
	}
	return nil
}

// List returns, in ascending byte order, the keys of the records directly
// under prefix (which ends in "/"). Errors: store.ErrInvalidKey or ctx.Err()
// wrapped.
func (s *Store) List(ctx context.Context, prefix string) ([]string, error) {
	if err := store.ValidatePrefix(prefix); err != nil {
		return nil, fmt.Errorf("boltstore: list: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("boltstore: list %q: %w", prefix, err)
	}
	keys := []string{}
	err := s.db.View(func(tx *bolt.Tx) error {
		p := []byte(prefix)
		c := tx.Bucket([]byte(recordsBucket)).Cursor()
		for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); {
			rest := k[len(p):]
			i := bytes.IndexByte(rest, '/')
			if i < 0 {
				keys = append(keys, string(k))
				k, _ = c.Next()
				continue
			}
			// k is deeper down: jump past the whole subtree, whose keys
			// all start with child+"/"; '/'+1 is the next byte.
			next := append(bytes.Clone(k[:len(p)+i]), '/'+1)
			k, _ = c.Seek(next)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("boltstore: list %q: %w", prefix, closedErr(err))
	}
	return keys, nil
}

// ListPage returns at most limit keys directly under prefix after `after`,
// and whether more follow: a cursor seek and limit+1 steps in one read
// transaction, whatever the number of keys. Errors: store.ErrInvalidKey,
// store.ErrInvalidLimit or ctx.Err() wrapped.
func (s *Store) ListPage(ctx context.Context, prefix, after string, limit int) ([]string, bool, error) {
	if err := store.ValidatePage(prefix, limit); err != nil {
		return nil, false, fmt.Errorf("boltstore: list page: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, false, fmt.Errorf("boltstore: list page %q: %w", prefix, err)
	}
	keys := make([]string, 0, min(limit, 1024))
	more := false
	err := s.db.View(func(tx *bolt.Tx) error {
		p := []byte(prefix)
		start := p
		if after > prefix {
			start = []byte(after)
		}
		c := tx.Bucket([]byte(recordsBucket)).Cursor()
		for k, _ := c.Seek(start); k != nil && bytes.HasPrefix(k, p); {
			rest := k[len(p):]
			if i := bytes.IndexByte(rest, '/'); i >= 0 {
				// Deeper down: jump past the subtree, as List does.
				k, _ = c.Seek(append(bytes.Clone(k[:len(p)+i]), '/'+1))
				continue
			}
			if string(k) > after {
				if len(keys) == limit {
					more = true
					return nil
				}
				keys = append(keys, string(k))
			}
			k, _ = c.Next()
		}
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("boltstore: list page %q: %w", prefix, closedErr(err))
	}
	return keys, more, nil
}

// ListingHints takes no hints (nil): one process owns the file, and a page reads
// the keys themselves.
func (s *Store) ListingHints(prefix string) func(string, bool) { return store.NoHints(prefix) }

// closedErr names bbolt's "database not open" in this package's terms, so
// callers need not import bbolt to recognise a closed store.
func closedErr(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// Close releases the file and its lock, waiting for running transactions.
// The Store is unusable afterwards.
func (s *Store) Close() error {
	if s.stopRelease != nil {
		close(s.stopRelease)
		<-s.releaseDone
		s.stopRelease = nil
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("boltstore: close %s: %w", s.path, err)
	}
	return nil
}
