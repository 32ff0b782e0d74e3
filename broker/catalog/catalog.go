// Package catalog is the consumer catalog: which caller identity obtained
// access tokens for which credential, first seen, last seen and how many,
// in one store record per credential. Alone on its store a replica merges
// the uses it served into those records itself; replicas sharing a store
// leave them in inboxes that the holder of each duty shard merges once for
// all of them (inbox.go). It asks the rotation core only whether a
// credential exists (Credentials) and which shards this replica holds.
// Package broker re-exports its types.
package catalog

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/internal/jsonrec"
	"github.com/rotavault/rotavault/broker/internal/textcheck"
	"github.com/rotavault/rotavault/internal/credid"
	"github.com/rotavault/rotavault/store"
)

// The consumer catalog records which caller identity obtained access tokens
// for which credential: first seen, last seen and how many. The transport
// aggregates GetAccessToken answers in memory and hands them over here
// periodically (Record), so the hot path never writes to the store.
//
// Layout: one record per credential, under Key(id), holding every
// identity of that credential. Identities contain ':' and '/', which the
// store's key grammar forbids, so they live inside the value. Merges into
// the record are check-and-set writes: counts are added, first seen is the
// earliest and last seen the latest of the merged values.

// MaxConsumersPerCredential is how many identities a credential's catalog
// keeps. Tokens handed to further identities are not listed: each replica
// logs them and counts them in Stats.ConsumerTokensDropped.
const MaxConsumersPerCredential = 500

// MaxIdentityLen bounds an identity the catalog records (a SPIFFE ID is
// at most 2,048 bytes), so that a use always fits a batch (MaxBatchBytes).
const MaxIdentityLen = 4096

const (
	// KeyPrefix is the store prefix of the catalog's records.
	KeyPrefix = "consumers/"
	// maxCatalogBytes bounds one credential's encoded catalog well under
	// store.MaxValueLen, in case identities are long: a new identity that
	// would take the record past it counts as overflow like one past
	// MaxConsumersPerCredential.
	maxCatalogBytes = 192 << 10
	// catalogAttempts bounds the read-merge-write loop of one credential's
	// catalog against concurrent flushes of other replicas.
	catalogAttempts = 16
)

// Key is where credential id's catalog lives.
func Key(id string) string { return KeyPrefix + id }

// Use is the access tokens one caller identity obtained for one
// credential during an interval, as the transport aggregated them.
type Use struct {
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

// Cursor says where a listing resumes: after this identity of this
// credential. The zero value starts at the beginning.
type Cursor struct {
	CredentialID string
	Identity     string
}

// Credentials is what the catalog needs of the rotation core.
type Credentials interface {
	// Incarnation returns the incarnation of credential id as stored;
	// brokererr.ErrNotFound when there is none.
	Incarnation(ctx context.Context, id string) (string, error)
}

// Config holds a Catalog's dependencies.
type Config struct {
	Store       store.Store
	Credentials Credentials
	Logger      *slog.Logger
	// Shared says replicas share the store and its duty shards: Record
	// leaves the uses in this replica's inboxes and MergeInboxes merges
	// those of the shards OwnsShard says this replica holds (inbox.go).
	// Otherwise (a replica alone on its store, or duty sharing off) Record
	// merges straight into the catalog records, as the only writer or as
	// one of several racing with check-and-set.
	Shared bool
	// OwnsShard reports whether this replica holds the duty lease of shard
	// i (lease.ShardOf of a credential id); used only when Shared.
	OwnsShard func(i int) bool
}

// Catalog is the consumer catalog. Safe for concurrent use, also by
// replicas sharing the store. Create it with New.
type Catalog struct {
	store store.Store
	creds Credentials
	log   *slog.Logger
	// inbox is nil unless Config.Shared (inbox.go).
	inbox *inbox
	// dropped counts tokens the catalog had no room to attribute (see
	// MaxConsumersPerCredential).
	dropped atomic.Int64
}

// New returns the catalog kept in cfg.Store for cfg.Credentials.
func New(cfg Config) *Catalog {
	c := &Catalog{store: cfg.Store, creds: cfg.Credentials, log: cfg.Logger}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if cfg.Shared {
		c.inbox = newInbox(cfg.OwnsShard)
	}
	return c
}

func randomWriteID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// catalogRecord is a credential's catalog in the store.
type catalogRecord struct {
	Format int `json:"format"`
	// Incarnation is the credential's (see family.Credential.FamilyKey): a catalog left by an
	// earlier credential of the same id is not this one's.
	Incarnation string `json:"incarnation,omitempty"`
	// Consumers are sorted by identity, each identity once.
	Consumers []catalogEntry `json:"consumers"`
	// Writes are the ids of the latest writes, newest last: a writer whose
	// check-and-set write seems to have lost (Vault's client replays a
	// request whose answer was lost, and the replay meets our own new
	// version) finds its id here and does not merge twice.
	Writes []string `json:"writes,omitempty"`
	// Applied are the ids of the latest inbox batches merged into this
	// record, newest last (appliedMarks of them, and older ones while their
	// batch is in the inbox: trimMarks): whoever merges a batch
	// again — after a holder died between this write and the batch's
	// deletion, after a lost answer, on a lease handover — finds its id
	// here and skips it (inbox.go).
	Applied []string `json:"applied,omitempty"`
}

// catalogWrites is how many write ids a catalog remembers.
const catalogWrites = 16

type catalogEntry struct {
	Identity  string    `json:"identity"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	Count     uint64    `json:"count"`
}

// Record hands uses to the consumer catalog. Shared (Config.Shared), it
// writes them to this replica's inboxes, one record per shard with uses
// (more when they are large), to be merged by the shards' holders
// (MergeInboxes); an inbox takes at most MaxInboxBatches of this
// replica's unmerged batches, and the uses of the batches past its room
// are returned (the rest of the shard's are written). Otherwise it merges them into the catalog records, one
// check-and-set write per credential. Uses of a credential that no longer exists are
// dropped, and so are uses of identities past MaxConsumersPerCredential
// (logged, and counted in Dropped). It returns the uses it could not store
// (store unavailable, or losing the check-and-set race catalogAttempts
// times), for the caller to retry later, with the errors why; the others
// are stored exactly once. A write whose answer was lost (a replay meeting
// its own write, a timeout after the store applied it) is recognised by its
// write id, read back from the catalog: uses are returned only when the
// store did not take them, or could not even be read back. Malformed uses
// are dropped and reported as an *InvalidArgumentError in the error, not
// returned. Errors:
// *InvalidArgumentError, *UnavailableError, brokererr.ErrConflict. Safe for
// concurrent use, also by replicas sharing the store.
func (c *Catalog) Record(ctx context.Context, uses []Use) ([]Use, error) {
	var (
		unrecorded []Use
		errs       []error
	)
	byCred := make(map[string][]Use)
	for _, u := range uses {
		if err := validateUse(u); err != nil {
			errs = append(errs, err)
			continue
		}
		byCred[u.CredentialID] = append(byCred[u.CredentialID], u)
	}
	if c.inbox != nil {
		unrecorded, err := c.recordInbox(ctx, byCred)
		return unrecorded, errors.Join(append(errs, err)...)
	}
	for _, id := range sortedCredentials(byCred) {
		if err := c.recordCredentialConsumers(ctx, id, byCred[id]); err != nil {
			unrecorded = append(unrecorded, byCred[id]...)
			errs = append(errs, err)
		}
	}
	return unrecorded, errors.Join(errs...)
}

// sortedCredentials is the keys of byCred in order.
func sortedCredentials(byCred map[string][]Use) []string {
	ids := make([]string, 0, len(byCred))
	for id := range byCred {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

func validateUse(u Use) error {
	switch {
	case credid.Validate(u.CredentialID) != nil:
		return brokererr.Invalid("credential_id", "consumer use of %q: not a credential id", u.CredentialID)
	case u.Identity == "" || len(u.Identity) > MaxIdentityLen || !textcheck.Printable(u.Identity):
		return brokererr.Invalid("identity", "consumer use of %s: identity empty, longer than %d bytes or not printable", u.CredentialID, MaxIdentityLen)
	case u.Count == 0 || u.FirstSeen.IsZero() || u.LastSeen.Before(u.FirstSeen):
		return brokererr.Invalid("count", "consumer use of %s by %s: needs a count, and first seen at or before last seen", u.CredentialID, u.Identity)
	}
	return nil
}

func (c *Catalog) recordCredentialConsumers(ctx context.Context, id string, uses []Use) error {
	writeID := randomWriteID()
	var dropped []Use // by the write that may have landed
	for range catalogAttempts {
		incarnation, err := c.creds.Incarnation(ctx, id)
		if errors.Is(err, brokererr.ErrNotFound) {
			c.log.DebugContext(ctx, "consumer uses of a deleted credential dropped", "credential", id, "identities", len(uses))
			return nil
		}
		if err != nil {
			return err
		}
		rec, version, err := c.readCatalog(ctx, id)
		if err != nil {
			return err
		}
		if slices.Contains(rec.Writes, writeID) {
			c.reportDropped(ctx, id, dropped) // our write landed; its answer was lost
			return nil
		}
		if rec.Incarnation != incarnation {
			// Left by a deleted credential of the same id (a flush that
			// raced the delete): not this credential's consumers.
			rec = &catalogRecord{Incarnation: incarnation}
		}
		rec.Format = jsonrec.Format
		if dropped, err = mergeConsumers(rec, uses); err != nil {
			return err
		}
		rec.Writes = append(rec.Writes, writeID)
		rec.Writes = rec.Writes[max(0, len(rec.Writes)-catalogWrites):]
		raw, err := jsonrec.Encode(rec)
		if err != nil {
			return err
		}
		_, err = c.store.Put(ctx, Key(id), raw, version)
		if err != nil && !errors.Is(err, store.ErrConflict) {
			// The write may have landed with its answer lost (a timeout after
			// the store applied it): returning the uses would merge them a
			// second time at the next flush, under another write id.
			if !c.catalogWriteLanded(ctx, id, writeID) {
				return brokererr.StoreUnavailable(err)
			}
			err = nil
		}
		if errors.Is(err, store.ErrConflict) {
			continue // another replica flushed: merge into what it wrote
		}
		if version == 0 {
			c.dropOrphanCatalog(ctx, id)
		}
		c.reportDropped(ctx, id, dropped)
		return nil
	}
	return fmt.Errorf("broker: consumer catalog of %s: %w (%d attempts)", id, brokererr.ErrConflict, catalogAttempts)
}

// catalogWriteLanded reads the catalog back after a failed write and
// reports whether the write of writeID is in it. The read runs on a context
// of its own, bounded: the write may have failed because ctx ran out.
func (c *Catalog) catalogWriteLanded(ctx context.Context, id, writeID string) bool {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), catalogReadBackTimeout)
	defer cancel()
	rec, _, err := c.readCatalog(rctx, id)
	return err == nil && slices.Contains(rec.Writes, writeID)
}

// catalogReadBackTimeout bounds the read of catalogWriteLanded.
const catalogReadBackTimeout = 5 * time.Second

// dropOrphanCatalog deletes a catalog just created for a credential that
// has been deleted meanwhile. DeleteCredential removes the catalog after
// the credential, so a flush that read the credential before the delete and
// created the catalog after it is the only way to leave one behind.
func (c *Catalog) dropOrphanCatalog(ctx context.Context, id string) {
	if _, err := c.creds.Incarnation(ctx, id); !errors.Is(err, brokererr.ErrNotFound) {
		return
	}
	if err := c.store.Delete(ctx, Key(id)); err != nil {
		c.log.WarnContext(ctx, "consumer catalog of a deleted credential not removed; it is ignored and replaced if the id is created again", "credential", id, "err", err)
	}
}

func (c *Catalog) reportDropped(ctx context.Context, id string, dropped []Use) {
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
	c.dropped.Add(int64(tokens))
	c.log.WarnContext(ctx, "consumer catalog full: identities not recorded",
		"credential", id, "max_identities", MaxConsumersPerCredential, "identities", len(dropped), "tokens", tokens,
		"first_identities", strings.Join(names, " "))
}

// readCatalog returns a credential's catalog and its version; a missing one
// is empty with version 0.
func (c *Catalog) readCatalog(ctx context.Context, id string) (*catalogRecord, uint64, error) {
	r, err := c.store.Get(ctx, Key(id))
	if errors.Is(err, store.ErrNotFound) {
		return &catalogRecord{}, 0, nil
	}
	if err != nil {
		return nil, 0, brokererr.StoreUnavailable(err)
	}
	var rec catalogRecord
	if err := jsonrec.Decode(r.Value, &rec, &rec.Format); err != nil {
		return nil, 0, err
	}
	return &rec, r.Version, nil
}

// mergeConsumers adds uses (all of one credential) into rec: counts add up,
// first seen is the earliest, last seen the latest. Identities new to rec
// are admitted in identity order while the catalog has room; it returns
// the uses of those that were not.
func mergeConsumers(rec *catalogRecord, uses []Use) ([]Use, error) {
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
	raw, err := jsonrec.Encode(rec)
	if err != nil {
		return nil, err
	}
	size := len(raw)
	names := make([]string, 0, len(fresh))
	for name := range fresh {
		names = append(names, name)
	}
	sort.Strings(names)
	var dropped []Use
	for _, name := range names {
		e := fresh[name]
		entry, err := json.Marshal(e)
		if err != nil {
			return nil, fmt.Errorf("broker: encode catalog entry: %w", err)
		}
		if len(rec.Consumers) >= MaxConsumersPerCredential || size+len(entry)+1 > maxCatalogBytes {
			dropped = append(dropped, Use{Identity: e.Identity, FirstSeen: e.FirstSeen, LastSeen: e.LastSeen, Count: e.Count})
			continue
		}
		rec.Consumers = append(rec.Consumers, *e)
		size += len(entry) + 1
	}
	sort.Slice(rec.Consumers, func(i, j int) bool { return rec.Consumers[i].Identity < rec.Consumers[j].Identity })
	return dropped, nil
}

func mergeEntry(e *catalogEntry, u Use) {
	e.Count += u.Count
	if u.FirstSeen.Before(e.FirstSeen) {
		e.FirstSeen = u.FirstSeen
	}
	if u.LastSeen.After(e.LastSeen) {
		e.LastSeen = u.LastSeen
	}
}

// List lists up to limit catalog entries after the cursor,
// ordered by credential and then identity, and reports whether more follow.
// With credentialID set, only that credential's. The newest uses show once
// the replicas that served them have flushed and, on a shared store, the
// holder of the credential's shard has merged its inbox. Errors:
// *InvalidArgumentError, brokererr.ErrNotFound (credentialID names no credential),
// *UnavailableError.
func (c *Catalog) List(ctx context.Context, credentialID string, after Cursor, limit int) ([]Consumer, bool, error) {
	if credentialID != "" {
		if err := credid.Validate(credentialID); err != nil {
			return nil, false, &brokererr.InvalidArgumentError{Field: "credential_id", Reason: err.Error()}
		}
	}
	if limit < 1 {
		return nil, false, brokererr.Invalid("page_size", "must be positive")
	}
	if after.CredentialID != "" {
		if credid.Validate(after.CredentialID) != nil || (credentialID != "" && after.CredentialID != credentialID) {
			return nil, false, brokererr.Invalid("page_token", "not a page of this listing")
		}
	} else if after.Identity != "" {
		return nil, false, brokererr.Invalid("page_token", "not a page of this listing")
	}
	var out []Consumer
	// add appends id's consumers after the cursor and reports whether the
	// page is full (one more than limit, to know that more follow).
	add := func(id string) (bool, error) {
		entries, err := c.catalogOf(ctx, id)
		if errors.Is(err, brokererr.ErrNotFound) && credentialID == "" {
			return false, nil // deleted meanwhile
		}
		if err != nil {
			return false, err
		}
		for _, e := range entries {
			if id == after.CredentialID && e.Identity <= after.Identity {
				continue
			}
			out = append(out, Consumer{CredentialID: id, Identity: e.Identity, FirstSeen: e.FirstSeen, LastSeen: e.LastSeen, Count: e.Count})
			if len(out) > limit {
				return true, nil
			}
		}
		return false, nil
	}
	if credentialID != "" {
		full, err := add(credentialID)
		return pageOf(out, limit, full, err)
	}
	// The cursor's credential may have identities left; the catalogs after
	// it come page by page from the store, never all of them: a page reads
	// at most limit+1 catalogs that hold a consumer, so its cost does not
	// grow with the number of credentials.
	next := ""
	if after.CredentialID != "" {
		if full, err := add(after.CredentialID); full || err != nil {
			return pageOf(out, limit, full, err)
		}
		next = Key(after.CredentialID)
	}
	for {
		keys, more, err := c.store.ListPage(ctx, KeyPrefix, next, limit+1)
		if err != nil {
			return nil, false, brokererr.StoreUnavailable(err)
		}
		for _, k := range keys {
			if full, err := add(strings.TrimPrefix(k, KeyPrefix)); full || err != nil {
				return pageOf(out, limit, full, err)
			}
		}
		if !more || len(keys) == 0 {
			return out, false, nil
		}
		next = keys[len(keys)-1]
	}
}

// pageOf is List's answer once add said whether the page is full.
func pageOf(out []Consumer, limit int, full bool, err error) ([]Consumer, bool, error) {
	if err != nil {
		return nil, false, err
	}
	if full {
		return out[:limit], true, nil
	}
	return out, false, nil
}

// catalogOf returns the catalog of an existing credential (empty if none
// is stored, or if the stored one belongs to an earlier credential of the
// same id). brokererr.ErrNotFound if the credential does not exist.
func (c *Catalog) catalogOf(ctx context.Context, id string) ([]catalogEntry, error) {
	incarnation, err := c.creds.Incarnation(ctx, id)
	if err != nil {
		return nil, err
	}
	rec, _, err := c.readCatalog(ctx, id)
	if err != nil {
		return nil, err
	}
	if rec.Incarnation != incarnation {
		return nil, nil
	}
	return rec.Consumers, nil
}
