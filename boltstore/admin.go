package boltstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

// Backup writes a consistent copy of the whole store file to w, taken in one
// read transaction while writers go on. The copy is a store file sealed
// under the same keys: it opens with the key current at the time of the
// backup (plus any previous keys still in use then), and a later RotateKey
// does not change that. Errors: ctx.Err() wrapped if ctx ends before the
// copy does, or the write error of w.
func (s *Store) Backup(ctx context.Context, w io.Writer) error {
	return s.Snapshot(ctx, func(int64) (io.Writer, error) { return w, nil })
}

// Snapshot is Backup for a writer that needs the copy's size before its
// first byte (a stream announcing its length): start receives the size,
// taken in the copy's own transaction, and returns where the copy goes.
// An error from start ends the snapshot and is returned wrapped.
//
// The read transaction lasts only as long as copying the file to a
// temporary file beside the store (mode 0600, removed afterwards): while a
// read transaction is open, the first write that must grow the file waits
// for it, and every other write queues behind that one — so a slow reader
// of the copy (a backup streamed over a slow link) must not hold it. The
// copy then goes to start's writer from the temporary file; the directory
// needs room for a second copy of the store meanwhile.
func (s *Store) Snapshot(ctx context.Context, start func(size int64) (io.Writer, error)) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("boltstore: backup: %w", err)
	}
	spool, err := os.CreateTemp(filepath.Dir(s.path), ".backup-*.tmp")
	if err != nil {
		return fmt.Errorf("boltstore: backup %s: %w", s.path, err)
	}
	defer func() {
		_ = spool.Close()
		_ = os.Remove(spool.Name())
	}()
	var size int64
	err = s.db.View(func(tx *bolt.Tx) error {
		size = tx.Size()
		_, err := tx.WriteTo(ctxWriter{ctx: ctx, w: spool})
		return err
	})
	if err != nil {
		return fmt.Errorf("boltstore: backup %s: %w", s.path, closedErr(err))
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("boltstore: backup %s: %w", s.path, err)
	}
	w, err := start(size)
	if err != nil {
		return fmt.Errorf("boltstore: backup %s: %w", s.path, err)
	}
	if _, err := io.Copy(ctxWriter{ctx: ctx, w: w}, io.LimitReader(spool, size)); err != nil {
		return fmt.Errorf("boltstore: backup %s: %w", s.path, err)
	}
	return nil
}

// ctxWriter stops a long copy when its context ends.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

// RotateKey re-seals every record, and the key check, under newKey in one
// transaction, keeping keys, values and versions. Either all records move or
// none do. Afterwards the store opens with newKey alone, and no longer with
// the old keys alone; this Store keeps reading the old keys too, though
// nothing is sealed under them any more.
//
// Writers wait while the rotation runs; readers do not. It returns the
// number of records re-sealed. Errors: ErrCorrupt or ErrUnknownKey if some
// record cannot be opened (nothing changes then), ctx.Err() wrapped.
func (s *Store) RotateKey(ctx context.Context, newKey Key) (rewritten int, err error) {
	if !newKey.set {
		return 0, errors.New("boltstore: rotate key: no key given")
	}
	next, err := newSealer(newKey)
	if err != nil {
		return 0, fmt.Errorf("boltstore: rotate key: %w", err)
	}
	s.rotateMu.Lock()
	defer s.rotateMu.Unlock()

	old := s.keys.Load()
	// Readers meet records under newKey as soon as the transaction commits,
	// so they must know it first. Sealing new records under it from now on
	// is what the rotation wants; Put waits on rotateMu meanwhile, so none
	// does before the outcome is known.
	rotated := old.with(next)
	s.keys.Store(rotated)

	err = s.db.Update(func(tx *bolt.Tx) error {
		records := tx.Bucket([]byte(recordsBucket))
		type resealed struct{ key, value []byte }
		var out []resealed
		// Collect first: bbolt cursors are not stable while the bucket
		// they walk is written.
		err := records.ForEach(func(k, v []byte) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			r, value, err := rotated.open(kindRecord, string(k), v)
			if err != nil {
				return fmt.Errorf("record %q: %w", k, err)
			}
			out = append(out, resealed{bytes.Clone(k), next.seal(kindRecord, string(k), r.Version, value)})
			clear(value)
			return nil
		})
		if err != nil {
			return err
		}
		for _, r := range out {
			if err := records.Put(r.key, r.value); err != nil {
				return err
			}
		}
		meta := tx.Bucket([]byte(metaBucket))
		if err := meta.Put([]byte(metaKeyCheck), next.seal(kindKeyCheck, metaKeyCheck, 1, []byte(keyCheckValue))); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rewritten = len(out)
		return nil
	})
	if err != nil {
		s.keys.Store(old)
		return 0, fmt.Errorf("boltstore: rotate key of %s: %w", s.path, closedErr(err))
	}
	s.log.Info("boltstore: key rotated", "path", s.path, "from_key_id", old.current.idString(), "to_key_id", newKey.ID(), "records", rewritten)
	return rewritten, nil
}
