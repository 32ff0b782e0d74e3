package notice

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/internal/jsonrec"
	"github.com/rotavault/rotavault/store"
)

// Replays read pages. Besides its record of its own (notices/<seq>, kept
// for replicas of earlier versions and for the follower), every notice is
// added by its appender to the page that holds its sequence number
// (notice-pages/<seq / noticePageSize>) and to its credential's index
// (notice-index/<credential>, the sequence numbers of its notices still
// kept), both with check-and-set. A replay across the whole retention then
// reads the head and at most retention/noticePageSize + 1 pages; a watcher
// filtered to a few credentials reads their indexes and only the pages
// holding their notices, whatever other credentials' traffic was.
//
// The head says from which sequence number pages are complete
// (PagedFrom). A log written by an earlier version has no pages: a replay
// from before that point is answered ErrCursorExpired (OUT_OF_RANGE, the
// client resynchronises) rather than read notice by notice. An earlier
// version rewriting the head drops the field; the next append by this
// version sets it again, to its own notice, so a notice written without a
// page is never promised to be in one.

const (
	// noticePageSize is how many consecutive sequence numbers a page holds:
	// a full retention of 10,000 notices is 101 pages at most, each about
	// 100 × 250 bytes.
	noticePageSize    = 100
	noticePagesPrefix = "notice-pages/"
	noticeIndexPrefix = "notice-index/"
	// maxReplaysPerIdentity bounds the store-reading replays one identity
	// runs at once on this replica; beyond, Subscribe fails with
	// ErrTooManyReplays.
	maxReplaysPerIdentity = 2
	// noticeWriteTries bounds the check-and-set rounds of a page or index
	// update; each conflict means another appender made progress.
	noticeWriteTries = 16
)

// ErrTooManyReplays: the caller already runs maxReplaysPerIdentity replays
// that read the store on this replica. Retry shortly; a resume from a cursor
// among the newest 32 notices is not a replay and is never refused.
var ErrTooManyReplays = errors.New("broker: too many watch replays from the store for this identity")

func noticePageKey(page uint64) string {
	return fmt.Sprintf("%s%020d", noticePagesPrefix, page)
}

func noticeIndexKey(credentialID string) string { return noticeIndexPrefix + credentialID }

// noticePage holds the notices whose sequence numbers fall in one page,
// ascending.
type noticePage struct {
	Format  int            `json:"format"`
	Notices []loggedNotice `json:"notices"`
}

// noticeIndex lists the sequence numbers of a credential's notices still
// kept (or pruned since its last notice), ascending.
type noticeIndex struct {
	Format int      `json:"format"`
	Seqs   []uint64 `json:"seqs"`
}

// updateRecord is a bounded check-and-set loop on one key: mutate sees the
// stored value (nil when missing) and returns the value to write, or nil to
// write nothing. likelyNew: the first try writes as if the key were missing,
// without reading it (a conflict then reads it as usual).
func (l *Log) updateRecord(ctx context.Context, key string, likelyNew bool, mutate func(raw []byte) ([]byte, error)) error {
	for try := range noticeWriteTries {
		var raw []byte
		var version uint64
		rec, err := store.Record{}, store.ErrNotFound
		if try > 0 || !likelyNew {
			rec, err = l.store.Get(ctx, key)
		}
		switch {
		case err == nil:
			raw, version = rec.Value, rec.Version
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		next, err := mutate(raw)
		if err != nil || next == nil {
			return err
		}
		_, err = l.store.Put(ctx, key, next, version)
		if !errors.Is(err, store.ErrConflict) {
			return err
		}
	}
	return fmt.Errorf("broker: %s kept changing", key)
}

// addToPage adds notices (ascending, all of page p) to their page.
func (l *Log) addToPage(ctx context.Context, p uint64, notices []loggedNotice) error {
	return l.updateRecord(ctx, noticePageKey(p), false, func(raw []byte) ([]byte, error) {
		page := noticePage{Format: jsonrec.Format}
		if raw != nil {
			if err := jsonrec.Decode(raw, &page, &page.Format); err != nil {
				return nil, err
			}
		}
		added := false
		for _, ln := range notices {
			i, found := slices.BinarySearchFunc(page.Notices, ln.Seq, func(e loggedNotice, s uint64) int { return cmpUint(e.Seq, s) })
			if found {
				continue // an earlier attempt landed
			}
			page.Notices = slices.Insert(page.Notices, i, ln)
			added = true
		}
		if !added {
			return nil, nil
		}
		page.Format = jsonrec.Format
		return jsonrec.Encode(page)
	})
}

// addToIndex adds seq to its credential's index and drops what was pruned
// (below oldest). A family activated is most often a new credential's first
// (onboarding): its index is written without a read first.
func (l *Log) addToIndex(ctx context.Context, n Notice, seq, oldest uint64) error {
	return l.updateRecord(ctx, noticeIndexKey(n.CredentialID), n.Kind == FamilyActivated, func(raw []byte) ([]byte, error) {
		idx := noticeIndex{Format: jsonrec.Format}
		if raw != nil {
			if err := jsonrec.Decode(raw, &idx, &idx.Format); err != nil {
				return nil, err
			}
		}
		i, found := slices.BinarySearch(idx.Seqs, seq)
		if found {
			return nil, nil
		}
		idx.Format = jsonrec.Format
		idx.Seqs = slices.Insert(idx.Seqs, i, seq)
		keep, _ := slices.BinarySearch(idx.Seqs, oldest)
		idx.Seqs = idx.Seqs[keep:]
		return jsonrec.Encode(idx)
	})
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// writePages records g's notices in their pages, one check-and-set write
// per page, after the head reserved them: every notice, which followers
// more than 32 behind read there (replays skip those not meant for
// watchers), or with Options.Records only those meant for watchers, as
// earlier versions' replays expect. Failures are logged: the notices are in
// the log (the head), and a replay finds them in the head while they are
// among the newest 32.
func (l *Log) writePages(ctx context.Context, g *appendGroup) {
	byPage := make(map[uint64][]loggedNotice)
	var pages []uint64
	for i, n := range g.notices {
		if l.records && !n.Kind.ForWatchers() {
			continue
		}
		seq := g.first + uint64(i)
		p := seq / noticePageSize
		if _, ok := byPage[p]; !ok {
			pages = append(pages, p)
		}
		byPage[p] = append(byPage[p], loggedNotice{Seq: seq, Notice: n})
	}
	for _, p := range pages {
		if err := l.addToPage(ctx, p, byPage[p]); err != nil {
			l.log.WarnContext(ctx, "notices not added to their page; replicas more than 32 behind skip them after 5 s, and replays from far back miss them", "page", p, "err", err)
		}
	}
}

// prunePages deletes the pages wholly below oldest, from the page of
// prevOldest on (those below were deleted by earlier appends).
func (l *Log) prunePages(ctx context.Context, prevOldest, oldest uint64) {
	for p := prevOldest / noticePageSize; (p+1)*noticePageSize <= oldest; p++ {
		if err := l.store.Delete(ctx, noticePageKey(p)); err != nil {
			l.log.WarnContext(ctx, "could not prune a notice page", "page", p, "err", err)
		}
	}
}

// acquireReplay takes one of the identity's store-reading replay slots.
func (l *Log) acquireReplay(identity string) (release func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.replays[identity] >= maxReplaysPerIdentity {
		return nil, fmt.Errorf("%w (%d at once)", ErrTooManyReplays, maxReplaysPerIdentity)
	}
	l.replays[identity]++
	released := false
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if released {
			return
		}
		released = true
		if l.replays[identity]--; l.replays[identity] <= 0 {
			delete(l.replays, identity)
		}
	}, nil
}

// storeReplay is a replay that reads the store: the notices after from up
// to last, page by page.
type storeReplay struct {
	from, last uint64
	release    func()
	pages      []uint64
	// recent holds the head's newest notices in the range, served after
	// the pages (the head is where a notice is first committed).
	recent []loggedNotice
	// recentFrom is the first sequence number served from recent; pages
	// serve those below it.
	recentFrom uint64
	// queue holds the current page's notices still to return.
	queue []loggedNotice
}

// startStoreReplay prepares the replay of the notices after from up to
// last, which this replica's ring does not hold. It reads the head: what
// the head repeats (its newest 32 notices) is served from it, and a resume
// that needs nothing more is no replay — never refused, one read. One that
// needs pages takes a replay slot of ctx's identity first (else
// ErrTooManyReplays), then reads the filter's indexes when that reads
// fewer pages: a filter naming more credentials than half the pages in
// range scans the pages instead, so a replay never costs more than
// 1 + pages + pages/2 reads (about 150 for a full retention of 10,000).
func (l *Log) startStoreReplay(ctx context.Context, from, last uint64, filter map[string]bool) (*storeReplay, error) {
	meta, _, err := l.readMeta(ctx)
	if err != nil {
		return nil, brokererr.StoreUnavailable(err)
	}
	if from+1 < meta.OldestSeq {
		return nil, fmt.Errorf("%w: pruned before the replay began", ErrCursorExpired)
	}
	r := &storeReplay{from: from, last: last, release: func() {}, recentFrom: last + 1}
	for _, n := range meta.Recent {
		if n.Seq > from && n.Seq <= last {
			r.recent = append(r.recent, n)
			r.recentFrom = min(r.recentFrom, n.Seq)
		}
	}
	lo, hi := from+1, r.recentFrom-1
	if lo > hi {
		return r, nil
	}
	l.mu.Lock()
	l.notePagedFrom(meta.PagedFrom, meta.NextSeq)
	pagedFrom := l.pagedFrom
	l.mu.Unlock()
	if lo < pagedFrom {
		return nil, fmt.Errorf("%w: the cursor is from before this notice log kept pages (an upgrade); watch again without a cursor", ErrCursorExpired)
	}
	release, err := l.acquireReplay(audit.Actor(ctx))
	if err != nil {
		return nil, err
	}
	r.release = release
	if err := r.choosePages(ctx, l, filter, lo, hi); err != nil {
		release()
		return nil, err
	}
	return r, nil
}

// choosePages lists the pages the replay reads for the notices from lo to
// hi.
func (r *storeReplay) choosePages(ctx context.Context, l *Log, filter map[string]bool, lo, hi uint64) error {
	first, lastPage := lo/noticePageSize, hi/noticePageSize
	n := lastPage - first + 1
	if filter == nil || uint64(len(filter)) > n/2 {
		for p := first; p <= lastPage; p++ {
			r.pages = append(r.pages, p)
		}
		return nil
	}
	set := make(map[uint64]bool)
	for id := range filter {
		rec, err := l.store.Get(ctx, noticeIndexKey(id))
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return brokererr.StoreUnavailable(err)
		}
		var idx noticeIndex
		if err := jsonrec.Decode(rec.Value, &idx, &idx.Format); err != nil {
			return err
		}
		for _, s := range idx.Seqs {
			if s >= lo && s <= hi {
				set[s/noticePageSize] = true
			}
		}
	}
	for p := range set {
		r.pages = append(r.pages, p)
	}
	slices.Sort(r.pages)
	return nil
}

// next returns the replay's next notice, found false when it is over.
func (r *storeReplay) next(ctx context.Context, l *Log, filter map[string]bool) (loggedNotice, bool, error) {
	wants := func(n loggedNotice, lo, hi uint64) bool {
		return n.Seq >= lo && n.Seq <= hi && n.Notice.Kind.ForWatchers() && (filter == nil || filter[n.Notice.CredentialID])
	}
	for {
		if len(r.queue) > 0 {
			n := r.queue[0]
			r.queue = r.queue[1:]
			r.releaseIfDone(wants)
			return n, true, nil
		}
		if len(r.pages) == 0 {
			break
		}
		// A page leaves the list once read: after a store error, the next
		// call reads it again.
		p := r.pages[0]
		rec, err := l.store.Get(ctx, noticePageKey(p))
		if errors.Is(err, store.ErrNotFound) {
			// Pruned meanwhile (the watcher is too far behind), or every
			// writer of the page died before writing it.
			meta, _, err := l.readMeta(ctx)
			if err != nil {
				return loggedNotice{}, false, brokererr.StoreUnavailable(err)
			}
			if (p+1)*noticePageSize <= meta.OldestSeq {
				return loggedNotice{}, false, fmt.Errorf("%w: pruned while replaying", ErrCursorExpired)
			}
			r.pages = r.pages[1:]
			continue
		}
		if err != nil {
			return loggedNotice{}, false, brokererr.StoreUnavailable(err)
		}
		r.pages = r.pages[1:]
		page, err := decodePage(rec.Value)
		if err != nil {
			return loggedNotice{}, false, err
		}
		for _, n := range page {
			if wants(n, r.from+1, r.recentFrom-1) {
				r.queue = append(r.queue, n)
			}
		}
	}
	for len(r.recent) > 0 {
		n := r.recent[0]
		r.recent = r.recent[1:]
		if wants(n, r.recentFrom, r.last) {
			r.releaseIfDone(wants)
			return n, true, nil
		}
	}
	r.release()
	return loggedNotice{}, false, nil
}

// releaseIfDone gives the replay slot back as soon as nothing is left to
// read from the store: a watcher that got its last replayed notice and
// then waits for live ones holds no slot.
func (r *storeReplay) releaseIfDone(wants func(n loggedNotice, lo, hi uint64) bool) {
	if len(r.queue) > 0 || len(r.pages) > 0 {
		return
	}
	for _, n := range r.recent {
		if wants(n, r.recentFrom, r.last) {
			return
		}
	}
	r.release()
}

// readPage reads the page under key: its notices, each with its sequence
// number. A missing page is the store's ErrNotFound, wrapped.
func readPage(ctx context.Context, s store.Store, key string) ([]Notice, error) {
	rec, err := s.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("broker: read notice page: %w", err)
	}
	page, err := decodePage(rec.Value)
	if err != nil {
		return nil, err
	}
	notices := make([]Notice, len(page))
	for i, ln := range page {
		notices[i] = ln.Notice
		notices[i].seq = ln.Seq
	}
	return notices, nil
}

// decodePage is a stored page's notices, in sequence order.
func decodePage(raw []byte) ([]loggedNotice, error) {
	var page noticePage
	if err := jsonrec.Decode(raw, &page, &page.Format); err != nil {
		return nil, err
	}
	return page.Notices, nil
}

// Kept is every notice the log in s keeps — in pages, and in records of
// their own where no page holds them (notices an earlier version or
// Options.Records wrote) — in sequence order: what a resuming watcher could
// be replayed, and what tests look at.
func Kept(ctx context.Context, s store.Store) ([]Notice, error) {
	bySeq := make(map[uint64]Notice)
	pages, err := s.List(ctx, noticePagesPrefix)
	if err != nil {
		return nil, err
	}
	for _, k := range pages {
		notices, err := readPage(ctx, s, k)
		if err != nil {
			return nil, err
		}
		for _, n := range notices {
			bySeq[n.seq] = n
		}
	}
	records, err := s.List(ctx, recordPrefix)
	if err != nil {
		return nil, err
	}
	for _, k := range records {
		seq, err := strconv.ParseUint(strings.TrimPrefix(k, recordPrefix), 10, 64)
		if err != nil {
			continue // not a record of the log's
		}
		if _, paged := bySeq[seq]; paged {
			continue
		}
		n, found, err := readRecord(ctx, s, seq)
		if err != nil {
			return nil, err
		}
		if found {
			bySeq[seq] = n
		}
	}
	seqs := slices.Sorted(maps.Keys(bySeq))
	out := make([]Notice, len(seqs))
	for i, seq := range seqs {
		out[i] = bySeq[seq]
	}
	return out, nil
}
