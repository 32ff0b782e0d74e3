package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/rotavault/rotavault/internal/credid"
	"github.com/rotavault/rotavault/store"
)

// The consumer catalog records which caller identity obtained access tokens
// for which credential: first seen, last seen and how many. The transport
// aggregates GetAccessToken answers in memory and hands them over here
// periodically (RecordConsumers), so the hot path never writes to the store.
//
// Layout: one record per credential, under consumersKey(id), holding every
// identity of that credential. Identities contain ':' and '/', which the
// store's key grammar forbids, so they live inside the value. Replicas merge
// into the record with check-and-set: counts are added, first seen is the
// earliest and last seen the latest of the merged values.

// MaxConsumersPerCredential is how many identities a credential's catalog
// keeps. Tokens handed to further identities are not listed: each replica
// logs them and counts them in Stats.ConsumerTokensDropped.
const MaxConsumersPerCredential = 500

const (
	consumersPrefix = "consumers/"
	// maxCatalogBytes bounds one credential's encoded catalog well under
	// store.MaxValueLen, in case identities are long: a new identity that
	// would take the record past it counts as overflow like one past
	// MaxConsumersPerCredential.
	maxCatalogBytes = 192 << 10
	// catalogAttempts bounds the read-merge-write loop of one credential's
	// catalog against concurrent flushes of other replicas.
	catalogAttempts = 16
)

func consumersKey(id string) string { return consumersPrefix + id }

// ConsumerUse is the access tokens one caller identity obtained for one
// credential during an interval, as the transport aggregated them.
type ConsumerUse struct {
	CredentialID string
	Identity     string
	FirstSeen    time.Time
	LastSeen     time.Time
	Count        uint64
}

// Consumer is a catalog entry: one identity's use of one credential, over
// all replicas since the credential was created.
type Consumer struct {
	CredentialID string
	Identity     string
	FirstSeen    time.Time
	LastSeen     time.Time
	Count        uint64
}

// ConsumerCursor says where a listing resumes: after this identity of this
// credential. The zero value starts at the beginning.
type ConsumerCursor struct {
	CredentialID string
	Identity     string
}

// catalogRecord is a credential's catalog in the store.
type catalogRecord struct {
	Format int `json:"format"`
	// Incarnation is the credential's (see familyKey): a catalog left by an
	// earlier credential of the same id is not this one's.
	Incarnation string `json:"incarnation,omitempty"`
	// Consumers are sorted by identity, each identity once.
	Consumers []catalogEntry `json:"consumers"`
	// Writes are the ids of the latest writes, newest last: a writer whose
	// check-and-set write seems to have lost (Vault's client replays a
	// request whose answer was lost, and the replay meets our own new
	// version) finds its id here and does not merge twice.
	Writes []string `json:"writes,omitempty"`
}

// catalogWrites is how many write ids a catalog remembers.
const catalogWrites = 16

type catalogEntry struct {
	Identity  string    `json:"identity"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	Count     uint64    `json:"count"`
}

// RecordConsumers merges uses into the consumer catalog, one check-and-set
// write per credential. Uses of a credential that no longer exists are
// dropped, and so are uses of identities past MaxConsumersPerCredential
// (logged, and counted in Stats). It returns the uses it could not store
// (store unavailable, or losing the check-and-set race catalogAttempts
// times), for the caller to retry later, with the errors why; the others
// are stored exactly once. A write whose answer was lost (a replay meeting
// its own write, a timeout after the store applied it) is recognised by its
// write id, read back from the catalog: uses are returned only when the
// store did not take them, or could not even be read back. Malformed uses
// are dropped and reported as an *InvalidArgumentError in the error, not
// returned. Errors:
// *InvalidArgumentError, *UnavailableError, ErrConflict. Safe for
// concurrent use, also by replicas sharing the store.
func (b *Broker) RecordConsumers(ctx context.Context, uses []ConsumerUse) ([]ConsumerUse, error) {
	var (
		unrecorded []ConsumerUse
		errs       []error
	)
	byCred := make(map[string][]ConsumerUse)
	for _, u := range uses {
		if err := validateUse(u); err != nil {
			errs = append(errs, err)
			continue
		}
		byCred[u.CredentialID] = append(byCred[u.CredentialID], u)
	}
	ids := make([]string, 0, len(byCred))
	for id := range byCred {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if err := b.recordCredentialConsumers(ctx, id, byCred[id]); err != nil {
			unrecorded = append(unrecorded, byCred[id]...)
			errs = append(errs, err)
		}
	}
	return unrecorded, errors.Join(errs...)
}

func validateUse(u ConsumerUse) error {
	switch {
	case credid.Validate(u.CredentialID) != nil:
		return invalid("credential_id", "consumer use of %q: not a credential id", u.CredentialID)
	case u.Identity == "" || !printable(u.Identity):
		return invalid("identity", "consumer use of %s: identity empty or not printable", u.CredentialID)
	case u.Count == 0 || u.FirstSeen.IsZero() || u.LastSeen.Before(u.FirstSeen):
		return invalid("count", "consumer use of %s by %s: needs a count, and first seen at or before last seen", u.CredentialID, u.Identity)
	}
	return nil
}

func (b *Broker) recordCredentialConsumers(ctx context.Context, id string, uses []ConsumerUse) error {
	writeID := randomHex(8)
	var dropped []ConsumerUse // by the write that may have landed
	for range catalogAttempts {
		cred, _, err := b.readCredential(ctx, id)
		if errors.Is(err, ErrNotFound) {
			b.log.DebugContext(ctx, "consumer uses of a deleted credential dropped", "credential", id, "identities", len(uses))
			return nil
		}
		if err != nil {
			return err
		}
		rec, version, err := b.readCatalog(ctx, id)
		if err != nil {
			return err
		}
		if slices.Contains(rec.Writes, writeID) {
			b.reportDropped(ctx, id, dropped) // our write landed; its answer was lost
			return nil
		}
		if rec.Incarnation != cred.Incarnation {
			// Left by a deleted credential of the same id (a flush that
			// raced the delete): not this credential's consumers.
			rec = &catalogRecord{Incarnation: cred.Incarnation}
		}
		rec.Format = recordFormat
		if dropped, err = mergeConsumers(rec, uses); err != nil {
			return err
		}
		rec.Writes = append(rec.Writes, writeID)
		rec.Writes = rec.Writes[max(0, len(rec.Writes)-catalogWrites):]
		raw, err := encodeRecord(rec)
		if err != nil {
			return err
		}
		_, err = b.store.Put(ctx, consumersKey(id), raw, version)
		if err != nil && !errors.Is(err, store.ErrConflict) {
			// The write may have landed with its answer lost (a timeout after
			// the store applied it): returning the uses would merge them a
			// second time at the next flush, under another write id.
			if !b.catalogWriteLanded(ctx, id, writeID) {
				return storeUnavailable(err)
			}
			err = nil
		}
		if errors.Is(err, store.ErrConflict) {
			continue // another replica flushed: merge into what it wrote
		}
		if version == 0 {
			b.dropOrphanCatalog(ctx, id)
		}
		b.reportDropped(ctx, id, dropped)
		return nil
	}
	return fmt.Errorf("broker: consumer catalog of %s: %w (%d attempts)", id, ErrConflict, catalogAttempts)
}

// catalogWriteLanded reads the catalog back after a failed write and
// reports whether the write of writeID is in it. The read runs on a context
// of its own, bounded: the write may have failed because ctx ran out.
func (b *Broker) catalogWriteLanded(ctx context.Context, id, writeID string) bool {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), catalogReadBackTimeout)
	defer cancel()
	rec, _, err := b.readCatalog(rctx, id)
	return err == nil && slices.Contains(rec.Writes, writeID)
}

// catalogReadBackTimeout bounds the read of catalogWriteLanded.
const catalogReadBackTimeout = 5 * time.Second

// dropOrphanCatalog deletes a catalog just created for a credential that
// has been deleted meanwhile. DeleteCredential removes the catalog after
// the credential, so a flush that read the credential before the delete and
// created the catalog after it is the only way to leave one behind.
func (b *Broker) dropOrphanCatalog(ctx context.Context, id string) {
	if _, _, err := b.readCredential(ctx, id); !errors.Is(err, ErrNotFound) {
		return
	}
	if err := b.store.Delete(ctx, consumersKey(id)); err != nil {
		b.log.WarnContext(ctx, "consumer catalog of a deleted credential not removed; it is ignored and replaced if the id is created again", "credential", id, "err", err)
	}
}

func (b *Broker) reportDropped(ctx context.Context, id string, dropped []ConsumerUse) {
	if len(dropped) == 0 {
		return
	}
	var tokens uint64
	names := make([]string, 0, min(len(dropped), 5))
	for _, u := range dropped {
		tokens += u.Count
		if len(names) < cap(names) {
			names = append(names, u.Identity)
		}
	}
	b.metrics.consumerTokensDropped.Add(int64(tokens))
	b.log.WarnContext(ctx, "consumer catalog full: identities not recorded",
		"credential", id, "max_identities", MaxConsumersPerCredential, "identities", len(dropped), "tokens", tokens,
		"first_identities", strings.Join(names, " "))
}

// readCatalog returns a credential's catalog and its version; a missing one
// is empty with version 0.
func (b *Broker) readCatalog(ctx context.Context, id string) (*catalogRecord, uint64, error) {
	r, err := b.store.Get(ctx, consumersKey(id))
	if errors.Is(err, store.ErrNotFound) {
		return &catalogRecord{}, 0, nil
	}
	if err != nil {
		return nil, 0, storeUnavailable(err)
	}
	var rec catalogRecord
	if err := decodeRecord(r.Value, &rec, &rec.Format); err != nil {
		return nil, 0, err
	}
	return &rec, r.Version, nil
}

// mergeConsumers adds uses (all of one credential) into rec: counts add up,
// first seen is the earliest, last seen the latest. Identities new to rec
// are admitted in identity order while the catalog has room; it returns
// the uses of those that were not.
func mergeConsumers(rec *catalogRecord, uses []ConsumerUse) ([]ConsumerUse, error) {
	index := make(map[string]int, len(rec.Consumers))
	for i, c := range rec.Consumers {
		index[c.Identity] = i
	}
	fresh := make(map[string]*catalogEntry)
	for _, u := range uses {
		u.FirstSeen, u.LastSeen = u.FirstSeen.UTC(), u.LastSeen.UTC()
		if i, ok := index[u.Identity]; ok {
			mergeEntry(&rec.Consumers[i], u)
		} else if e, ok := fresh[u.Identity]; ok {
			mergeEntry(e, u)
		} else {
			fresh[u.Identity] = &catalogEntry{Identity: u.Identity, FirstSeen: u.FirstSeen, LastSeen: u.LastSeen, Count: u.Count}
		}
	}
	if len(fresh) == 0 {
		return nil, nil
	}
	raw, err := encodeRecord(rec)
	if err != nil {
		return nil, err
	}
	size := len(raw)
	names := make([]string, 0, len(fresh))
	for name := range fresh {
		names = append(names, name)
	}
	sort.Strings(names)
	var dropped []ConsumerUse
	for _, name := range names {
		e := fresh[name]
		entry, err := json.Marshal(e)
		if err != nil {
			return nil, fmt.Errorf("broker: encode catalog entry: %w", err)
		}
		if len(rec.Consumers) >= MaxConsumersPerCredential || size+len(entry)+1 > maxCatalogBytes {
			dropped = append(dropped, ConsumerUse{Identity: e.Identity, FirstSeen: e.FirstSeen, LastSeen: e.LastSeen, Count: e.Count})
			continue
		}
		rec.Consumers = append(rec.Consumers, *e)
		size += len(entry) + 1
	}
	sort.Slice(rec.Consumers, func(i, j int) bool { return rec.Consumers[i].Identity < rec.Consumers[j].Identity })
	return dropped, nil
}

func mergeEntry(e *catalogEntry, u ConsumerUse) {
	e.Count += u.Count
	if u.FirstSeen.Before(e.FirstSeen) {
		e.FirstSeen = u.FirstSeen
	}
	if u.LastSeen.After(e.LastSeen) {
		e.LastSeen = u.LastSeen
	}
}

// ListConsumers lists up to limit catalog entries after the cursor,
// ordered by credential and then identity, and reports whether more follow.
// With credentialID set, only that credential's. The newest uses show once
// the replicas that served them have flushed. Errors:
// *InvalidArgumentError, ErrNotFound (credentialID names no credential),
// *UnavailableError.
func (b *Broker) ListConsumers(ctx context.Context, credentialID string, after ConsumerCursor, limit int) ([]Consumer, bool, error) {
	if credentialID != "" {
		if err := b.validateID(credentialID); err != nil {
			return nil, false, err
		}
	}
	if limit < 1 {
		return nil, false, invalid("page_size", "must be positive")
	}
	if after.CredentialID != "" {
		if credid.Validate(after.CredentialID) != nil || (credentialID != "" && after.CredentialID != credentialID) {
			return nil, false, invalid("page_token", "not a page of this listing")
		}
	} else if after.Identity != "" {
		return nil, false, invalid("page_token", "not a page of this listing")
	}
	var ids []string
	if credentialID != "" {
		ids = []string{credentialID}
	} else {
		keys, err := b.store.List(ctx, consumersPrefix)
		if err != nil {
			return nil, false, storeUnavailable(err)
		}
		for _, k := range keys {
			if id := strings.TrimPrefix(k, consumersPrefix); id >= after.CredentialID {
				ids = append(ids, id)
			}
		}
		sort.Strings(ids)
	}
	var out []Consumer
	for _, id := range ids {
		entries, err := b.catalogOf(ctx, id)
		if errors.Is(err, ErrNotFound) && credentialID == "" {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, false, err
		}
		for _, e := range entries {
			if id == after.CredentialID && e.Identity <= after.Identity {
				continue
			}
			out = append(out, Consumer{CredentialID: id, Identity: e.Identity, FirstSeen: e.FirstSeen, LastSeen: e.LastSeen, Count: e.Count})
			if len(out) > limit {
				return out[:limit], true, nil
			}
		}
	}
	return out, false, nil
}

// catalogOf returns the catalog of an existing credential (empty if none
// is stored, or if the stored one belongs to an earlier credential of the
// same id). ErrNotFound if the credential does not exist.
func (b *Broker) catalogOf(ctx context.Context, id string) ([]catalogEntry, error) {
	cred, _, err := b.readCredential(ctx, id)
	if err != nil {
		return nil, err
	}
	rec, _, err := b.readCatalog(ctx, id)
	if err != nil {
		return nil, err
	}
	if rec.Incarnation != cred.Incarnation {
		return nil, nil
	}
	return rec.Consumers, nil
}
