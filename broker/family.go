package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/internal/jsonrec"
	"github.com/rotavault/rotavault/internal/ctxwait"
	"github.com/rotavault/rotavault/store"
)

// familyWriteTries bounds the check-and-set rounds of one updateFamily
// call: each conflict means another writer made progress.
const familyWriteTries = 8

// errFamilyNotWritten marks the store error of a family write (as opposed
// to a read): the caller may hold what it meant to write.
var errFamilyNotWritten = errors.New("broker: family record not written")

// updateFamily is the only writer of family records. mutate sees the
// family as stored and returns the record to write, or nil to write nothing
// (the current state is the result: another replica's work is adopted,
// not repeated), or an error that ends the update. The write is a
// check-and-set on the version mutate saw; on a conflict the record is
// re-read and mutate decides again, at most familyWriteTries times.
//
// base, when set, is the state to decide on first without reading: the
// version the caller last saw or wrote (a claim's fence), so the common
// path costs one write and no read. Every state read or written becomes
// the entry's cached view.
//
// It returns the view written or adopted; with mutate's error, the view it
// decided on. Errors: mutate's, ErrConflict (still changing after
// familyWriteTries), ErrNotFound, *UnavailableError (a write error wraps
// errFamilyNotWritten).
func (b *Broker) updateFamily(ctx context.Context, e *entry, base *view, mutate func(cur *view) (*family.Record, error)) (*view, error) {
	cur := base
	for range familyWriteTries {
		if cur == nil {
			var err error
			if cur, err = b.readEntry(ctx, e); err != nil {
				return nil, err
			}
		}
		next, err := mutate(cur)
		if err != nil {
			return cur, err
		}
		if next == nil {
			return cur, nil
		}
		version, err := b.putFamily(ctx, cur.cred.FamilyKey(), next, cur.famVersion)
		if errors.Is(err, store.ErrConflict) {
			cur = nil
			continue
		}
		if err != nil {
			return nil, storeUnavailable(fmt.Errorf("%w: %w", errFamilyNotWritten, err))
		}
		v := b.newView(cur.cred, cur.credVersion, next, version)
		e.setView(v)
		return v, nil
	}
	return nil, fmt.Errorf("%w: the token family of %s kept changing", brokererr.ErrConflict, e.id)
}

// readEntry reads the entry's credential and family from the store and
// caches them.
func (b *Broker) readEntry(ctx context.Context, e *entry) (*view, error) {
	now := b.opts.Now()
	v, err := b.readView(ctx, e.id)
	if err != nil {
		return nil, err
	}
	e.credReadAt.Store(now.UnixNano())
	e.setView(v)
	return v, nil
}

// putFamily stores a family record with check-and-set on expected,
// retrying transient store errors. ErrConflict is returned at once. Only
// updateFamily calls it.
func (b *Broker) putFamily(ctx context.Context, key string, fam *family.Record, expected uint64) (uint64, error) {
	fam.Format = recordFormat
	raw, err := jsonrec.Encode(fam)
	if err != nil {
		return 0, err
	}
	for attempt := 0; ; attempt++ {
		version, err := b.store.Put(ctx, key, raw, expected)
		if errors.Is(err, store.ErrConflict) {
			// An earlier attempt may have been stored with its answer lost
			// (a timeout talking to Vault): then the record holds exactly
			// our bytes, and this is success, not a lost race.
			if rec, gerr := b.store.Get(ctx, key); gerr == nil && rec.Version == expected+1 && bytes.Equal(rec.Value, raw) {
				return rec.Version, nil
			}
		}
		if err == nil || errors.Is(err, store.ErrConflict) || attempt+1 >= storeWriteTries {
			return version, err
		}
		b.log.WarnContext(ctx, "store write failed; retrying", "key", key, "attempt", attempt+1, "err", err)
		if err := ctxwait.Sleep(ctx, b.opts.Refresh.Backoff(attempt, 0)); err != nil {
			return 0, err
		}
	}
}

// recordFormat versions the JSON records the broker keeps in the store (see
// package jsonrec).
const recordFormat = jsonrec.Format

func decodeRecord(raw []byte, v any, format *int) error { return jsonrec.Decode(raw, v, format) }
