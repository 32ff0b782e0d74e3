package catalog

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/internal/jsonrec"
	"github.com/rotavault/rotavault/broker/internal/lease"
	"github.com/rotavault/rotavault/store"
)

// Inboxes: how replicas sharing a store merge the catalog once, not once
// per replica.
//
// Each replica writes the uses it counted during a flush interval as
// batches: immutable records under InboxPrefix/<shard>/, one per duty
// shard with uses (split in parts of at most MaxBatchBytes), created with
// check-and-set version 0 under a fresh random name. Its catalog cost is
// so O(shards) writes per flush whatever the number of credentials.
//
// The replica holding a shard's duty lease (package lease) lists the
// shard's batches every flush, reads each new one once (they never change),
// and merges them into the catalog records of their credentials: one
// check-and-set write per credential for all replicas' batches at once.
// The record keeps the ids of the batches merged into it (Applied), so a
// merge is idempotent: a holder that dies between a catalog write and the
// batch's deletion, a write whose answer was lost, two holders across a
// lease handover, a FlushIssuance merging every shard — each skips what a
// record already holds. A batch is deleted once every credential in it is
// merged (or deleted): its uses are in the catalog exactly once.
//
// When: a credential with an identity its holder has not seen in its
// catalog is merged at the holder's next flush. Known identities wait for
// the credential's merge point, once per period of Periods flush intervals
// (MergePoint): replicas send a credential's known uses in the same
// interval (Slot), so the holder merges all of them with one write.

const (
	// InboxPrefix is the store prefix of the inboxes: InboxPrefix +
	// "<shard>/<writer>.<batch>".
	InboxPrefix = "consumers-inbox/"
	// Periods is how many flush intervals pass between two merges of a
	// credential whose consumers are all in its catalog already: the
	// transport sends their uses once per period (Slot), the holder merges
	// them once per period (MergePoint). New consumers go at once.
	Periods = 10
	// MaxBatchBytes bounds one batch record, well under store.MaxValueLen
	// (a use is at most MaxIdentityLen and a few hundred bytes).
	MaxBatchBytes = 64 << 10
	// MaxInboxBatches bounds a replica's unmerged batches per shard: 16 ×
	// 64 KiB = 1 MiB. With no holder merging them (every lease lapsed),
	// further uses wait in the replica's memory, as when the store is down.
	MaxInboxBatches = 16
	// MaxMergesPerRound bounds the catalog records one MergeInboxes call
	// writes; the rest wait for the next round.
	MaxMergesPerRound = 10000
	// appliedMarks is how many of the newest batch ids a catalog record
	// remembers, whatever became of their batches: a batch recreated by a
	// replayed creation after its deletion finds its mark. Older marks stay
	// while their batch is still in the inbox (trimMarks): a batch lives
	// until every credential in it has been merged, and a credential with
	// new consumers at every flush is merged from more batches meanwhile
	// than any fixed number of marks covers.
	appliedMarks = 128
	// listPage is the page size of the inbox listings.
	listPage = 256
)

// inboxFolder is shard's inbox folder.
func inboxFolder(shard int) string { return fmt.Sprintf("%s%02d/", InboxPrefix, shard) }

// batchRecord is one batch in the store.
type batchRecord struct {
	Format int   `json:"format"`
	Uses   []Use `json:"uses"`
}

// inbox is a Catalog's inbox state: what this process wrote, and what it
// knows as a holder.
type inbox struct {
	owns func(int) bool
	// writer names this process's batches (replica ids need not fit the
	// key grammar, and a restarted replica is a new writer).
	writer string

	// mu guards mine and counted (Record's writes).
	mu sync.Mutex
	// mine is, per shard, how many of this writer's batches may still be
	// unmerged: an upper bound, recounted from a listing when it reaches
	// MaxInboxBatches.
	mine [lease.Shards]int

	// mergeMu makes merge rounds one at a time and guards batches and seen.
	mergeMu sync.Mutex
	// batches caches the batches read, by key, until deleted.
	batches map[string]*pendingBatch
	// seen is, per credential this replica merged lately, the identities
	// its catalog holds and when it merged.
	seen map[string]*merged
	// start is the shard the next round begins with: rounds that run out
	// of their budget leave different shards for later.
	start int

	inboxWrites, inboxFull, merges, mergedBatches atomic.Int64
}

type pendingBatch struct {
	id   string
	uses []Use
	// done holds the credentials of uses already in the catalog.
	done map[string]bool
}

type merged struct {
	at         time.Time
	identities map[string]bool
}

func newInbox(owns func(int) bool) *inbox {
	if owns == nil {
		owns = func(int) bool { return true }
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return &inbox{owns: owns, writer: hex.EncodeToString(b), batches: make(map[string]*pendingBatch), seen: make(map[string]*merged)}
}

// Stats are a Catalog's counters since it started.
type Stats struct {
	// DroppedTokens counts tokens handed to identities a full catalog had
	// no room for (MaxConsumersPerCredential).
	DroppedTokens int64
	// InboxWrites counts the batches this replica wrote to inboxes;
	// InboxFullUses the uses it kept in memory because its inbox of their
	// shard was full (MaxInboxBatches unmerged batches).
	InboxWrites, InboxFullUses int64
	// Merges counts the catalog records this replica wrote from inboxes;
	// MergedBatches the batches it merged in full and deleted.
	Merges, MergedBatches int64
}

// Stats returns the counters.
func (c *Catalog) Stats() Stats {
	s := Stats{DroppedTokens: c.dropped.Load()}
	if in := c.inbox; in != nil {
		s.InboxWrites, s.InboxFullUses = in.inboxWrites.Load(), in.inboxFull.Load()
		s.Merges, s.MergedBatches = in.merges.Load(), in.mergedBatches.Load()
	}
	return s
}

// offset is credential's phase within a period, fixed per credential so
// that credentials first used together come due spread over the period.
func offset(credential string, period time.Duration) int64 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(credential))
	return int64(uint64(period) * uint64(h.Sum32()) >> 32)
}

// Slot is the period of Periods × interval that t falls in, for
// credential. Every replica agrees on it (as far as their clocks agree):
// the transport sends a credential's uses of known consumers once per
// slot, so that all replicas' uses of it meet in the inbox in the same
// flush interval.
func Slot(credential string, interval time.Duration, t time.Time) int64 {
	period := int64(Periods * interval)
	n := t.UnixNano() - offset(credential, time.Duration(period))
	if n < 0 {
		return (n+1)/period - 1
	}
	return n / period
}

// MergePoint is when the holder last had to merge credential's uses of
// known consumers, at or before now: one flush interval and a half after
// its latest slot began, when every replica has flushed its uses of that
// slot.
func MergePoint(credential string, interval time.Duration, now time.Time) time.Time {
	lag := interval + interval/2
	period := Periods * interval
	k := Slot(credential, interval, now.Add(-lag))
	return time.Unix(0, k*int64(period)+offset(credential, period)).Add(lag)
}

// recordInbox writes byCred's uses to this replica's inboxes, one batch
// per shard (more past MaxBatchBytes), and returns those it could not.
func (c *Catalog) recordInbox(ctx context.Context, byCred map[string][]Use) ([]Use, error) {
	var shards [lease.Shards][]Use
	for _, id := range sortedCredentials(byCred) {
		s := lease.ShardOf(id)
		shards[s] = append(shards[s], byCred[id]...)
	}
	var (
		unrecorded []Use
		errs       []error
	)
	for shard, uses := range shards {
		if len(uses) == 0 {
			continue
		}
		parts, err := splitBatches(uses)
		if err != nil {
			unrecorded, errs = append(unrecorded, uses...), append(errs, err)
			continue
		}
		room, err := c.inboxRoom(ctx, shard, len(parts))
		if err != nil {
			unrecorded, errs = append(unrecorded, uses...), append(errs, err)
			continue
		}
		// Write what fits and keep the rest: refused whole, a flush past the
		// bound (a fresh replica's first: every consumer new) would come
		// back larger at every flush and never go.
		if room < len(parts) {
			kept := 0
			for _, p := range parts[room:] {
				unrecorded, kept = append(unrecorded, p.uses...), kept+len(p.uses)
			}
			c.inbox.inboxFull.Add(int64(kept))
			errs = append(errs, fmt.Errorf("broker: consumer inbox of shard %d: %d unmerged batches, the bound: %w", shard, MaxInboxBatches, brokererr.ErrConflict))
			c.log.WarnContext(ctx, "consumer inbox full: its shard's holder has not merged it; uses kept in memory", "shard", shard, "uses", kept)
			parts = parts[:room]
		}
		for _, p := range parts {
			if err := c.putBatch(ctx, shard, p); err != nil {
				unrecorded, errs = append(unrecorded, p.uses...), append(errs, err)
			}
		}
	}
	return unrecorded, errors.Join(errs...)
}

// part is one batch to write: its uses and their encoding.
type part struct {
	uses []Use
	raw  []byte
}

// splitBatches encodes uses as batches of at most MaxBatchBytes (a use
// alone larger than that is a batch of its own). A batch's encoding is its
// uses' encodings joined by commas in a fixed envelope, so each use is
// sized once: the cost is linear in the uses, however many batches.
func splitBatches(uses []Use) ([]part, error) {
	empty, err := jsonrec.Encode(&batchRecord{Format: jsonrec.Format, Uses: []Use{}})
	if err != nil {
		return nil, err
	}
	var parts []part
	for len(uses) > 0 {
		n, size := 0, len(empty)
		for ; n < len(uses); n++ {
			raw, err := jsonrec.Encode(&uses[n])
			if err != nil {
				return nil, err
			}
			if n > 0 && size+len(raw)+1 > MaxBatchBytes {
				break
			}
			size += len(raw) + min(n, 1)
		}
		raw, err := jsonrec.Encode(&batchRecord{Format: jsonrec.Format, Uses: uses[:n]})
		if err != nil {
			return nil, err
		}
		parts = append(parts, part{uses: uses[:n], raw: raw})
		uses = uses[n:]
	}
	return parts, nil
}

// inboxRoom returns how many of n more batches shard's inbox has room for
// (this writer's, MaxInboxBatches in all); short of n it recounts them
// from a listing (the holder deletes what it merged).
func (c *Catalog) inboxRoom(ctx context.Context, shard, n int) (int, error) {
	in := c.inbox
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.mine[shard]+n <= MaxInboxBatches {
		return n, nil
	}
	keys, err := c.listInbox(ctx, shard)
	if err != nil {
		return 0, err
	}
	mine := 0
	for _, k := range keys {
		if strings.HasPrefix(k, inboxFolder(shard)+in.writer+".") {
			mine++
		}
	}
	in.mine[shard] = mine
	return max(0, min(n, MaxInboxBatches-mine)), nil
}

// putBatch creates one batch. A write whose answer was lost counts as
// written when the batch is found (nobody else writes its fresh name).
func (c *Catalog) putBatch(ctx context.Context, shard int, p part) error {
	id := randomWriteID()
	key := inboxFolder(shard) + c.inbox.writer + "." + id
	_, err := c.store.Put(ctx, key, p.raw, 0)
	if err != nil && !errors.Is(err, store.ErrConflict) { // a conflict: our replayed creation met itself
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), catalogReadBackTimeout)
		defer cancel()
		_, gerr := c.store.Get(rctx, key)
		if gerr != nil && !(errors.Is(gerr, store.ErrNotFound) && c.batchMerged(rctx, id, p.uses)) {
			return brokererr.StoreUnavailable(err)
		}
	}
	c.inbox.mu.Lock()
	c.inbox.mine[shard]++
	c.inbox.mu.Unlock()
	c.inbox.inboxWrites.Add(1)
	return nil
}

// batchMerged reports whether batch id, written though its answer was
// lost and gone by the time it was read back, was merged: a holder deletes
// a batch only once every credential in it carries its mark, so the first
// credential's record tells. Without this, its uses would be sent again
// and counted twice.
func (c *Catalog) batchMerged(ctx context.Context, id string, uses []Use) bool {
	if len(uses) == 0 {
		return false
	}
	rec, _, err := c.readCatalog(ctx, uses[0].CredentialID)
	return err == nil && slices.Contains(rec.Applied, id)
}

// listInbox lists shard's batches.
func (c *Catalog) listInbox(ctx context.Context, shard int) ([]string, error) {
	var keys []string
	after := ""
	for {
		page, more, err := c.store.ListPage(ctx, inboxFolder(shard), after, listPage)
		if err != nil {
			return nil, brokererr.StoreUnavailable(err)
		}
		keys = append(keys, page...)
		if !more || len(page) == 0 {
			return keys, nil
		}
		after = page[len(page)-1]
	}
}

// MergeInboxes merges the inboxes of the shards this replica holds (every
// shard with all) into the catalog records: credentials with a consumer
// new to their catalog at once, the others at their merge point
// (MergePoint; at once with all), at most MaxMergesPerRound records. It
// deletes the batches it merged in full. interval and now are the
// transport's flush interval and clock, whose slots (Slot) decide when
// replicas send uses: the merge points must follow the same clock. Without
// Config.Shared it does nothing. Errors:
// *UnavailableError, brokererr.ErrConflict; what failed is merged by a
// later round. Safe for concurrent use; rounds run one at a time.
func (c *Catalog) MergeInboxes(ctx context.Context, interval time.Duration, now time.Time, all bool) error {
	in := c.inbox
	if in == nil {
		return nil
	}
	in.mergeMu.Lock()
	defer in.mergeMu.Unlock()
	budget := MaxMergesPerRound
	var (
		errs []error
		held [lease.Shards]bool
	)
	for i := range lease.Shards {
		shard := (in.start + i) % lease.Shards
		if held[shard] = all || in.owns(shard); !held[shard] {
			continue
		}
		if err := c.mergeShard(ctx, shard, interval, now, all, &budget); err != nil {
			errs = append(errs, err)
		}
	}
	in.start = (in.start + 1) % lease.Shards
	for k := range in.batches { // another replica holds their shard now
		if shard := shardOfBatch(k); shard < 0 || !held[shard] {
			delete(in.batches, k)
		}
	}
	for cred, m := range in.seen { // follow the credentials in use, not every one ever used
		if now.Sub(m.at) > 3*Periods*interval {
			delete(in.seen, cred)
		}
	}
	return errors.Join(errs...)
}

// shardOfBatch is the shard of a batch key, -1 if it is none.
func shardOfBatch(key string) int {
	rest, ok := strings.CutPrefix(key, InboxPrefix)
	if !ok || len(rest) < 3 || rest[2] != '/' {
		return -1
	}
	n, err := strconv.Atoi(rest[:2])
	if err != nil {
		return -1
	}
	return n
}

// mergeShard is MergeInboxes for one shard. Called with mergeMu held.
func (c *Catalog) mergeShard(ctx context.Context, shard int, interval time.Duration, now time.Time, all bool, budget *int) error {
	in := c.inbox
	keys, err := c.listInbox(ctx, shard)
	if err != nil {
		return err
	}
	folder := inboxFolder(shard)
	listed := make(map[string]bool, len(keys))
	live := make(map[string]bool, len(keys)) // batch ids
	for _, k := range keys {
		listed[k] = true
		live[k[strings.LastIndexByte(k, '.')+1:]] = true
	}
	for k := range in.batches {
		if strings.HasPrefix(k, folder) && !listed[k] {
			delete(in.batches, k) // deleted by an earlier holder
		}
	}
	var errs []error
	byCred := make(map[string][]*pendingBatch)
	for _, k := range keys {
		pb, err := c.readBatch(ctx, k)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if pb == nil {
			continue
		}
		for _, u := range pb.uses {
			if list := byCred[u.CredentialID]; !pb.done[u.CredentialID] && (len(list) == 0 || list[len(list)-1] != pb) {
				byCred[u.CredentialID] = append(list, pb)
			}
		}
	}
	for _, cred := range sortedBatchCredentials(byCred) {
		if *budget <= 0 {
			break
		}
		due, learn := in.mergeDue(cred, byCred[cred], interval, now)
		if !all && !due {
			continue
		}
		*budget--
		identities, wrote, err := c.mergeBatches(ctx, cred, byCred[cred], live, learn && !all)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if wrote {
			for _, pb := range byCred[cred] {
				pb.done[cred] = true
			}
		}
		in.seen[cred] = &merged{at: now, identities: identities}
	}
	for _, k := range keys {
		if pb := in.batches[k]; pb != nil && pb.complete() {
			if err := c.store.Delete(ctx, k); err != nil {
				errs = append(errs, brokererr.StoreUnavailable(err))
				continue
			}
			delete(in.batches, k)
			in.mergedBatches.Add(1)
			if strings.HasPrefix(k, folder+in.writer+".") {
				in.mu.Lock()
				in.mine[shard] = max(0, in.mine[shard]-1)
				in.mu.Unlock()
			}
		}
	}
	return errors.Join(errs...)
}

// readBatch returns the batch under key, read once and cached; nil when
// it is gone. A batch that does not decode is left alone and logged.
func (c *Catalog) readBatch(ctx context.Context, key string) (*pendingBatch, error) {
	if pb := c.inbox.batches[key]; pb != nil {
		return pb, nil
	}
	r, err := c.store.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, brokererr.StoreUnavailable(err)
	}
	var rec batchRecord
	if err := jsonrec.Decode(r.Value, &rec, &rec.Format); err != nil {
		c.log.ErrorContext(ctx, "consumer inbox batch unreadable; left in place", "key", key, "err", err)
		return nil, nil
	}
	var uses []Use
	for _, u := range rec.Uses {
		if validateUse(u) == nil {
			uses = append(uses, u)
		}
	}
	pb := &pendingBatch{id: key[strings.LastIndexByte(key, '.')+1:], uses: uses, done: make(map[string]bool)}
	c.inbox.batches[key] = pb
	return pb, nil
}

func (pb *pendingBatch) complete() bool {
	for _, u := range pb.uses {
		if !pb.done[u.CredentialID] {
			return false
		}
	}
	return true
}

func sortedBatchCredentials(m map[string][]*pendingBatch) []string {
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// mergeDue says whether cred's pending uses are merged now: when one of
// their identities is not in its catalog as this replica last saw it, or
// when cred's merge point has passed since its last merge. With learn, only
// because this replica has not seen cred's catalog lately (it just took
// the shard over, or restarted): a read tells whether an identity is new,
// and the write waits for the merge point if none is, so that a handover
// costs a read per credential, not a write.
func (in *inbox) mergeDue(cred string, batches []*pendingBatch, interval time.Duration, now time.Time) (due, learn bool) {
	m := in.seen[cred]
	if m == nil {
		return true, true
	}
	for _, pb := range batches {
		for _, u := range pb.uses {
			if u.CredentialID == cred && !m.identities[u.Identity] {
				return true, false
			}
		}
	}
	return m.at.Before(MergePoint(cred, interval, now)), false
}

// mergeBatches merges cred's uses in batches into its catalog record,
// skipping the batches the record has applied already, and returns the
// identities the record holds and whether the batches are merged. With
// onlyNew, it writes only if an identity is new to the record. live are the
// ids of the batches in the shard's inbox (trimMarks). A deleted
// credential's uses are dropped (merged).
func (c *Catalog) mergeBatches(ctx context.Context, cred string, batches []*pendingBatch, live map[string]bool, onlyNew bool) (map[string]bool, bool, error) {
	for range catalogAttempts {
		incarnation, err := c.creds.Incarnation(ctx, cred)
		if errors.Is(err, brokererr.ErrNotFound) {
			return nil, true, nil
		}
		if err != nil {
			return nil, false, err
		}
		rec, version, err := c.readCatalog(ctx, cred)
		if err != nil {
			return nil, false, err
		}
		if rec.Incarnation != incarnation {
			rec = &catalogRecord{Incarnation: incarnation}
		}
		var (
			uses []Use
			ids  []string
		)
		for _, pb := range batches {
			if slices.Contains(rec.Applied, pb.id) {
				continue // merged by an earlier round or holder
			}
			ids = append(ids, pb.id)
			for _, u := range pb.uses {
				if u.CredentialID == cred {
					uses = append(uses, u)
				}
			}
		}
		if len(ids) == 0 {
			return identitiesOf(rec, batches, cred), true, nil
		}
		if onlyNew && !hasNewIdentity(rec, uses) {
			return identitiesOf(rec, batches, cred), false, nil
		}
		rec.Format = jsonrec.Format
		dropped, err := mergeConsumers(rec, uses)
		if err != nil {
			return nil, false, err
		}
		rec.Applied = trimMarks(append(rec.Applied, ids...), live)
		raw, err := jsonrec.Encode(rec)
		if err != nil {
			return nil, false, err
		}
		if _, err := c.store.Put(ctx, Key(cred), raw, version); errors.Is(err, store.ErrConflict) {
			continue // merged into meanwhile (a direct Record, another holder): again on what it wrote
		} else if err != nil {
			// It may have landed: the next round finds the marks.
			return nil, false, brokererr.StoreUnavailable(err)
		}
		c.inbox.merges.Add(1)
		if version == 0 {
			c.dropOrphanCatalog(ctx, cred)
		}
		c.reportDropped(ctx, cred, dropped)
		return identitiesOf(rec, batches, cred), true, nil
	}
	return nil, false, fmt.Errorf("broker: consumer catalog of %s: %w (%d attempts)", cred, brokererr.ErrConflict, catalogAttempts)
}

// trimMarks keeps the newest appliedMarks of marks and, of the older ones,
// those of batches still in the inbox (live): whoever reads such a batch
// afresh (a new holder, a FlushIssuance elsewhere, this holder after its
// lease lapsed) must find its mark. So a record keeps at most appliedMarks
// plus its shard's unmerged batches.
func trimMarks(marks []string, live map[string]bool) []string {
	old := marks[:max(0, len(marks)-appliedMarks)]
	kept := make([]string, 0, len(marks)-len(old))
	for _, m := range old {
		if live[m] {
			kept = append(kept, m)
		}
	}
	return append(kept, marks[len(old):]...)
}

// hasNewIdentity reports whether one of uses' identities is not in rec.
func hasNewIdentity(rec *catalogRecord, uses []Use) bool {
	in := make(map[string]bool, len(rec.Consumers))
	for _, e := range rec.Consumers {
		in[e.Identity] = true
	}
	for _, u := range uses {
		if !in[u.Identity] {
			return true
		}
	}
	return false
}

// identitiesOf is the identities rec holds and those of cred's uses in
// batches, just merged: also those a full catalog dropped, which a merge
// would drop again (and not a reason to merge at once).
func identitiesOf(rec *catalogRecord, batches []*pendingBatch, cred string) map[string]bool {
	ids := make(map[string]bool, len(rec.Consumers))
	for _, e := range rec.Consumers {
		ids[e.Identity] = true
	}
	for _, pb := range batches {
		for _, u := range pb.uses {
			if u.CredentialID == cred {
				ids[u.Identity] = true
			}
		}
	}
	return ids
}
