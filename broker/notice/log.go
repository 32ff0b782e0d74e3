package notice

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/internal/jsonrec"
	"github.com/rotavault/rotavault/internal/credid"
	"github.com/rotavault/rotavault/store"
)

// Notice reports a change of a credential's token family.
type Notice struct {
	CredentialID string           `json:"credential_id"`
	FamilyID     string           `json:"family_id"`
	Generation   uint64           `json:"generation"`
	Kind         Kind             `json:"kind"`
	Reason       RevocationReason `json:"reason,omitempty"`
	Detail       string           `json:"detail,omitempty"`
	// ProviderRevocation is set for ReasonAdminRevoked.
	ProviderRevocation ProviderRevocation `json:"provider_revocation,omitempty"`
	DetectedAt         time.Time          `json:"detected_at"`
	// Cursor is the notice's position in the log; not stored.
	Cursor string `json:"-"`
	seq    uint64
}

// Errors of WatchRevocations.
var (
	// ErrCursorExpired: the cursor points before the oldest notice kept (or
	// into another store's log). Resynchronise from current state.
	ErrCursorExpired = errors.New("broker: cursor older than the notice log's retention")
	// ErrSubscriberTooSlow: the subscriber fell too far behind and was cut
	// off. Resume with the cursor of the last notice received.
	ErrSubscriberTooSlow = errors.New("broker: subscriber too slow; resume with the last cursor")
)

// noticeLogMeta is the head of the persisted notice log: notices are stored
// in pages of 100 (pages.go; and under notices/<seq> where RecordsThrough
// says), oldest first; the epoch tells cursors of one log from another's.
//
// Recent repeats the newest notices in the head itself. Every replica
// follows the log by polling this one record, so a notice appended anywhere
// reaches every replica's subscribers with one read per replica per poll,
// however many credentials there are; the pages serve only followers and
// watchers resuming from further back.
type noticeLogMeta struct {
	Format    int            `json:"format"`
	Epoch     string         `json:"epoch"`
	NextSeq   uint64         `json:"next_seq"`
	OldestSeq uint64         `json:"oldest_seq"`
	Recent    []loggedNotice `json:"recent,omitempty"`
	// CursorKey seals cursors (see cursorCodec); stores encrypt records.
	CursorKey []byte `json:"cursor_key,omitempty"`
	// PagedFrom is the first sequence number from which every notice is
	// also in its page and its credential's index (pages.go); 0 when
	// unknown (a log an earlier version wrote last).
	PagedFrom uint64 `json:"paged_from,omitempty"`
	// RecordsThrough is the newest sequence number that may have a record
	// of its own (notices/<seq>): written by a replica with
	// Options.Records, or by an earlier version, which always wrote them
	// and, rewriting the head, dropped this field (nil: the next append
	// here sets it to the head's newest notice). Pruning deletes records
	// only up to it.
	RecordsThrough *uint64 `json:"records_through,omitempty"`
}

type loggedNotice struct {
	Seq    uint64 `json:"seq"`
	Notice Notice `json:"notice"`
}

// recentNotices is how many notices the log's head repeats. A follower that
// misses more than this between two polls reads the rest from their pages.
const recentNotices = 32

// missingNoticeWait bounds how long a follower waits for a reserved notice
// that is neither in the head nor stored yet (its writer is between the two
// writes, or died there) before skipping it.
const missingNoticeWait = 5 * time.Second

// Log persists notices in the store, for resuming, follows the log
// for notices other replicas append, and fans them all out to this process's
// subscribers in log order.
type Log struct {
	store     store.Store
	records   bool // Options.Records
	retention int
	buffer    int
	poll      time.Duration
	now       func() time.Time
	log       *slog.Logger
	// kick asks the follower to read the log now: a local append found a
	// gap below its notice (another replica's notice not seen yet).
	kick  chan struct{}
	heads singleflight.Group

	// mu guards what follows. Store calls are never made holding it, so a
	// slow store delays no subscriber and no delivery.
	mu      sync.Mutex
	epoch   string
	cursors cursorCodec // set by init, then read-only
	// delivered: every notice up to it went to the subscribers (or was
	// skipped: a reserved slot never written).
	delivered uint64
	// oldest is the oldest notice kept, as of the last read of the head.
	oldest uint64
	// pending holds notices above a gap, waiting for it to fill.
	pending map[uint64]pendingNotice
	// ring holds the newest delivered notices: every notice from ringFrom
	// to delivered is in it (or was skipped). A resume from a cursor in
	// that window — every client's after a GOAWAY — replays from memory,
	// not from the store.
	ring     []loggedNotice
	ringFrom uint64
	// pagedFrom: notices from it on are in pages (see noticeLogMeta).
	pagedFrom uint64
	// replays counts store-reading replays per identity.
	replays map[string]int
	// Every notice from missingSeq to missingThrough has been reserved in
	// the head since missingSince, and is missing (giveUpOn).
	missingSeq, missingThrough uint64
	missingSince               time.Time
	subs                       map[*Subscription]struct{}
	closed                     bool // by Close: no new subscriptions
	// readAt is when the head was last read successfully (unix nanos).
	readAt atomic.Int64

	// amu guards the append groups: open is the group new notices join,
	// writing whether a group is writing the head, waiting the sealed or
	// open groups queued for their turn, oldest first.
	amu     sync.Mutex
	open    *appendGroup
	writing bool
	waiting []*appendGroup
}

// Unread reports, as an error saying since when, that the log's head has
// not been read for several poll intervals (three, and at least 5 s):
// Follow reads it every interval, so a replica that has not for that long
// does not reach its store, and cannot rotate, record or announce
// anything (the broker's Ready).
func (l *Log) Unread() error {
	window := max(3*l.poll, 5*time.Second)
	if since := time.Since(l.LastRead()); since > window {
		return fmt.Errorf("last read %s ago (more than %s)", since.Round(time.Second), window)
	}
	return nil
}

func (l *Log) LastRead() time.Time {
	if n := l.readAt.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

type pendingNotice struct {
	notice Notice
	skip   bool
}

// Options tune a notice log.
type Options struct {
	// Retention is how many notices the log keeps for resuming watchers.
	Retention int
	// Buffer is how many notices a subscriber may fall behind before it is
	// cut off (ErrSubscriberTooSlow).
	Buffer int
	// Poll is how often Follow reads the log's head for other replicas'
	// notices.
	Poll time.Duration
	// Records keeps the log as versions before 2026-12-06 read it, for a
	// rolling upgrade from them: every notice also gets a record of its
	// own (notices/<seq>), which their followers read, and pages hold
	// only the notices meant for watchers, which their replays deliver
	// without looking at the kind. Off, a notice's record is its page: two
	// store writes less per notice (the record, and its deletion once out
	// of retention).
	Records bool
}

// New returns the notice log kept in s; Init it before use.
func New(s store.Store, o Options, now func() time.Time, log *slog.Logger) *Log {
	return &Log{
		store: s, records: o.Records, retention: o.Retention, buffer: o.Buffer, poll: o.Poll, now: now, log: log,
		kick:    make(chan struct{}, 1),
		pending: make(map[uint64]pendingNotice),
		subs:    make(map[*Subscription]struct{}),
		replays: make(map[string]int),
	}
}

// Store keys of the log: its head (HeadKey: every replica reads it each
// poll), and a record per notice under recordPrefix where Options.Records
// (or an earlier version) writes them (pages and indexes: pages.go).
const (
	HeadKey      = "meta/notice-log"
	recordPrefix = "notices/"
)

func noticeKey(seq uint64) string { return fmt.Sprintf("%s%020d", recordPrefix, seq) }

func (l *Log) Init(ctx context.Context) error {
	for {
		meta, version, err := l.readMeta(ctx)
		if err == nil && (len(meta.CursorKey) == 0 || meta.PagedFrom == 0) {
			// A log from before cursors were sealed, or before notices were
			// paged: give it a key, and start paging from here.
			if len(meta.CursorKey) == 0 {
				meta.CursorKey = newCursorKey()
			}
			if meta.PagedFrom == 0 {
				meta.PagedFrom = meta.NextSeq
			}
			raw, err := jsonrec.Encode(meta)
			if err != nil {
				return err
			}
			if _, err := l.store.Put(ctx, HeadKey, raw, version); err != nil && !errors.Is(err, store.ErrConflict) {
				return fmt.Errorf("broker: upgrade the notice log: %w", err)
			}
			continue
		}
		if err == nil {
			codec, err := newCursorCodec(meta.CursorKey)
			if err != nil {
				return err
			}
			l.epoch, l.cursors, l.delivered, l.oldest = meta.Epoch, codec, meta.NextSeq-1, meta.OldestSeq
			l.pagedFrom = meta.PagedFrom
			l.seedRing(meta)
			return nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		var epoch [8]byte
		_, _ = rand.Read(epoch[:])
		fresh := noticeLogMeta{Format: jsonrec.Format, Epoch: hex.EncodeToString(epoch[:]), NextSeq: 1, OldestSeq: 1, CursorKey: newCursorKey(), PagedFrom: 1, RecordsThrough: new(uint64(0))}
		raw, err := jsonrec.Encode(fresh)
		if err != nil {
			return err
		}
		if _, err := l.store.Put(ctx, HeadKey, raw, 0); err != nil && !errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("broker: create notice log: %w", err)
		}
	}
}

// readHead returns the sequence number of the log's newest notice. Callers
// arriving while a read is in flight share it, so a crowd of watchers
// reconnecting at once costs a few store reads, not one each.
func (l *Log) readHead(ctx context.Context) (uint64, error) {
	ch := l.heads.DoChan("head", func() (any, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), headReadTimeout)
		defer cancel()
		meta, _, err := l.readMeta(rctx)
		return meta.NextSeq - 1, err
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return 0, r.Err
		}
		return r.Val.(uint64), nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

const headReadTimeout = 10 * time.Second

func (l *Log) readMeta(ctx context.Context) (noticeLogMeta, uint64, error) {
	rec, err := l.store.Get(ctx, HeadKey)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return noticeLogMeta{}, 0, err
		}
		return noticeLogMeta{}, 0, fmt.Errorf("broker: read notice log: %w", err)
	}
	l.readAt.Store(time.Now().UnixNano())
	var meta noticeLogMeta
	if err := jsonrec.Decode(rec.Value, &meta, &meta.Format); err != nil {
		return noticeLogMeta{}, 0, err
	}
	return meta, rec.Version, nil
}

// errNoticeNotLogged: the notice could not be added to the log at all.
var errNoticeNotLogged = errors.New("broker: notice not logged")

// Append adds n to the log, then delivers it to subscribers once every
// notice before it has been. The notice is in the log once the head's
// check-and-set write succeeds; its page (and with Options.Records its own
// record) only serves followers and watchers resuming from far back, so
// failing to write it is logged, not returned.
//
// Notices appended concurrently on this replica share one head write (a
// group, at most recentNotices): the head is the one record every append
// writes, and without grouping concurrent appends — an onboarding wave,
// a reuse storm — spend most of their writes on conflicts over it. A group's
// first notice leads: it writes the head for the whole group once the
// previous group's head write is done, then hands over to the next group;
// every member then writes its own record and index. The writes run on a
// context detached from the callers' (bounded by appendTimeout): the state
// a notice reports is already stored, so it is logged even if its caller
// has gone.
func (l *Log) Append(ctx context.Context, n Notice) error {
	g, i, lead := l.joinGroup(n)
	return l.appendJoined(ctx, n, g, i, lead)
}

// appendJoined is Append after n joined group g at index i.
func (l *Log) appendJoined(ctx context.Context, n Notice, g *appendGroup, i int, lead bool) error {
	if lead {
		<-g.turn
		l.writeHead(ctx, g)
	}
	// Not given up when ctx ends: the wait is bounded by two head writes
	// (appendTimeout each), and only its outcome says whether Publish must
	// deliver the notice live instead.
	<-g.done
	if g.err != nil {
		return g.err
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), appendTimeout)
	defer cancel()
	seq := g.first + uint64(i)
	n.seq = seq
	// The index, the group's pages (and the record) are separate keys,
	// each its own store commit: written side by side, an append waits for
	// one commit after the head's instead of three.
	var wg sync.WaitGroup
	if n.Kind.ForWatchers() {
		// Indexes serve filtered replays only.
		wg.Go(func() {
			if err := l.addToIndex(wctx, n, seq, g.pruneTo); err != nil {
				l.log.WarnContext(ctx, "notice not added to its credential's index; filtered replays from far back will miss it", "seq", seq, "err", err)
			}
		})
	}
	if lead {
		// Pages (one write per page the group touches) and pruning, once
		// per group.
		wg.Go(func() {
			l.writePages(wctx, g)
			for old := g.pruneFrom; old < g.pruneTo && old <= g.recordsThrough; old++ {
				if err := l.store.Delete(wctx, noticeKey(old)); err != nil {
					l.log.WarnContext(ctx, "could not prune notice", "seq", old, "err", err)
				}
			}
			l.prunePages(wctx, g.pruneFrom, g.pruneTo)
		})
	}
	if l.records {
		raw, err := jsonrec.Encode(n)
		if err == nil {
			_, err = l.store.Put(wctx, noticeKey(seq), raw, 0)
		}
		if err != nil {
			l.log.WarnContext(ctx, "notice kept only in the log head; watchers resuming from far back may miss it", "seq", seq, "err", err)
		}
	}
	wg.Wait()
	return nil
}

// appendTimeout bounds the store writes of one append.
const appendTimeout = 10 * time.Second

// appendGroup is notices appended concurrently on this replica that share
// one head write (see Append).
type appendGroup struct {
	notices []Notice
	// turn is closed when the group may write the head: the previous
	// group's head write is done.
	turn chan struct{}
	// done is closed when the head is written (or failed: err); first,
	// pruneFrom, pruneTo are set by then.
	done                      chan struct{}
	err                       error
	first, pruneFrom, pruneTo uint64
	// recordsThrough is the head's RecordsThrough: the newest notice that
	// may have a record to prune.
	recordsThrough uint64
}

// joinGroup adds n to the open group (opening one when there is none or it
// is full) and returns it, n's index in it and whether n leads it.
func (l *Log) joinGroup(n Notice) (g *appendGroup, i int, lead bool) {
	l.amu.Lock()
	defer l.amu.Unlock()
	g = l.open
	if g == nil || len(g.notices) == recentNotices {
		g = &appendGroup{turn: make(chan struct{}), done: make(chan struct{})}
		lead = true
		if !l.writing {
			l.writing = true
			close(g.turn)
		} else {
			l.waiting = append(l.waiting, g)
		}
		l.open = g
	}
	g.notices = append(g.notices, n)
	return g, len(g.notices) - 1, lead
}

// writeHead reserves sequence numbers for g's notices in one check-and-set
// write of the head, delivers them locally, and hands the head over to the
// next group.
func (l *Log) writeHead(ctx context.Context, g *appendGroup) {
	l.amu.Lock()
	if l.open == g {
		l.open = nil // sealed: later notices join the next group
	}
	notices := g.notices
	l.amu.Unlock()

	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), appendTimeout)
	defer cancel()
	var pagedFrom uint64
	g.err = func() error {
		for {
			meta, version, err := l.readMeta(wctx)
			if err != nil {
				return fmt.Errorf("%w: %w", errNoticeNotLogged, err)
			}
			next := meta
			next.NextSeq += uint64(len(notices))
			if next.PagedFrom == 0 {
				// An earlier version wrote the head last: notices before
				// these may have no page.
				next.PagedFrom = meta.NextSeq
			}
			switch {
			case l.records:
				next.RecordsThrough = new(next.NextSeq - 1)
			case meta.RecordsThrough == nil:
				// An earlier version wrote the head last, and records.
				next.RecordsThrough = new(meta.NextSeq - 1)
			}
			if keep := uint64(l.retention); next.NextSeq-next.OldestSeq > keep {
				next.OldestSeq = next.NextSeq - keep
			}
			recent := make([]loggedNotice, 0, recentNotices)
			recent = append(recent, lastNotices(meta.Recent, recentNotices-len(notices))...)
			for i, n := range notices {
				recent = append(recent, loggedNotice{Seq: meta.NextSeq + uint64(i), Notice: n})
			}
			next.Recent = recent
			rawMeta, err := jsonrec.Encode(next)
			if err != nil {
				return fmt.Errorf("%w: %w", errNoticeNotLogged, err)
			}
			if _, err := l.store.Put(wctx, HeadKey, rawMeta, version); err != nil {
				if errors.Is(err, store.ErrConflict) {
					continue
				}
				return fmt.Errorf("%w: reserve notice: %w", errNoticeNotLogged, err)
			}
			g.first, g.pruneFrom, g.pruneTo = meta.NextSeq, meta.OldestSeq, next.OldestSeq
			g.recordsThrough = *next.RecordsThrough
			pagedFrom = next.PagedFrom
			return nil
		}
	}()

	// The next group may write the head now; this one's other writes go
	// on beside it.
	l.amu.Lock()
	if len(l.waiting) > 0 {
		close(l.waiting[0].turn)
		l.waiting = l.waiting[1:]
	} else {
		l.writing = false
	}
	l.amu.Unlock()

	if g.err == nil {
		gap := false
		l.mu.Lock()
		l.oldest = max(l.oldest, g.pruneTo)
		l.notePagedFrom(pagedFrom, 0)
		for i, n := range notices {
			gap = l.addLocked(g.first+uint64(i), pendingNotice{notice: n})
		}
		l.mu.Unlock()
		if gap {
			l.wake()
		}
	}
	close(g.done)
}

// notePagedFrom records where pages begin as a head read says (pagedFrom),
// a head without the field (0) meaning none before nextSeq; mu held.
func (l *Log) notePagedFrom(pagedFrom, nextSeq uint64) {
	if pagedFrom == 0 {
		pagedFrom = nextSeq
	}
	l.pagedFrom = max(l.pagedFrom, pagedFrom)
}

// seedRing fills the ring from the head's newest notices, when they are
// the contiguous tail of the log; mu held or not yet shared.
func (l *Log) seedRing(meta noticeLogMeta) {
	l.ring, l.ringFrom = nil, meta.NextSeq
	for i, r := range meta.Recent {
		if r.Seq != meta.NextSeq-uint64(len(meta.Recent)-i) {
			return
		}
	}
	for _, r := range meta.Recent {
		r.Notice.seq = r.Seq
		l.ring = append(l.ring, r)
	}
	l.ringFrom = meta.NextSeq - uint64(len(meta.Recent))
}

// ringAddLocked records a delivered (or skipped) notice in the ring.
func (l *Log) ringAddLocked(seq uint64, p pendingNotice) {
	if !p.skip {
		l.ring = append(l.ring, loggedNotice{Seq: seq, Notice: p.notice})
	}
	if seq+1 > recentNotices {
		l.ringFrom = max(l.ringFrom, seq+1-recentNotices)
	}
	drop := 0
	for drop < len(l.ring) && l.ring[drop].Seq < l.ringFrom {
		drop++
	}
	if drop > 0 {
		l.ring = append(l.ring[:0], l.ring[drop:]...)
	}
}

func lastNotices(ns []loggedNotice, k int) []loggedNotice {
	if len(ns) > k {
		return ns[len(ns)-k:]
	}
	return ns
}

func (l *Log) wake() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// addLocked records notice seq and delivers every notice now in order. It
// reports whether a gap is left below a pending notice, for the follower to
// fill.
func (l *Log) addLocked(seq uint64, p pendingNotice) (gap bool) {
	if seq > l.delivered {
		if _, ok := l.pending[seq]; !ok {
			p.notice.seq = seq
			l.pending[seq] = p
		}
		l.drainLocked()
	}
	return len(l.pending) > 0
}

// drainLocked delivers the pending notices that follow delivered without a
// gap.
func (l *Log) drainLocked() {
	for {
		p, ok := l.pending[l.delivered+1]
		if !ok {
			return
		}
		delete(l.pending, l.delivered+1)
		l.delivered++
		l.ringAddLocked(l.delivered, p)
		if p.skip {
			continue
		}
		n := p.notice
		n.Cursor = l.cursors.encode(n.seq)
		for s := range l.subs {
			s.deliver(n)
		}
	}
}

// Follow polls the log's head every Options.Poll and delivers what other
// replicas appended, until ctx ends. onRemote is called for each notice
// another replica appended, before it is delivered: a watcher acting on a
// notice then finds this replica's state already changed.
func (l *Log) Follow(ctx context.Context, onRemote func(context.Context, Notice)) {
	t := time.NewTicker(l.poll)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-l.kick:
		}
		err := l.catchUp(ctx, onRemote)
		switch {
		case err != nil && !failing && ctx.Err() == nil:
			l.log.WarnContext(ctx, "cannot follow the notice log; notices from other replicas are delayed", "err", err)
			failing = true
		case err == nil && failing:
			l.log.InfoContext(ctx, "following the notice log again")
			failing = false
		}
	}
}

// catchUp reads the head once and delivers every notice up to it that this
// process has not delivered yet.
func (l *Log) catchUp(ctx context.Context, onRemote func(context.Context, Notice)) error {
	meta, _, err := l.readMeta(ctx)
	if err != nil {
		return err
	}
	head := meta.NextSeq - 1
	l.mu.Lock()
	if meta.Epoch != l.epoch {
		l.mu.Unlock()
		return fmt.Errorf("broker: the notice log was replaced (epoch %s, following %s); restart this replica", meta.Epoch, l.epoch)
	}
	l.oldest = max(l.oldest, meta.OldestSeq)
	l.notePagedFrom(meta.PagedFrom, meta.NextSeq)
	from := l.delivered + 1
	if from < meta.OldestSeq && from <= head {
		// More notices than the log keeps went by while this replica could
		// not read it: its subscribers cannot be given them. Cut them off
		// so they resynchronise instead of silently missing notices.
		l.log.ErrorContext(ctx, "fell behind the notice log; ending every watch on this replica so clients resynchronise", "missed_from", from, "oldest_kept", meta.OldestSeq)
		for s := range l.subs {
			s.closeWith(fmt.Errorf("%w: this replica fell behind the notice log", ErrCursorExpired))
		}
		clear(l.pending)
		l.delivered = meta.OldestSeq - 1
		l.ring, l.ringFrom = nil, meta.OldestSeq
		from = meta.OldestSeq
	}
	l.mu.Unlock()
	recent := make(map[uint64]Notice, len(meta.Recent))
	for _, r := range meta.Recent {
		recent[r.Seq] = r.Notice
	}
	pages := make(map[uint64]map[uint64]Notice)
	for seq := from; seq <= head; seq++ {
		l.mu.Lock()
		_, known := l.pending[seq]
		known = known || seq <= l.delivered
		l.mu.Unlock()
		if known {
			continue
		}
		var p pendingNotice
		if n, ok := recent[seq]; ok {
			p.notice = n
		} else {
			n, found, err := l.followedNotice(ctx, seq, pages)
			if err != nil {
				return err
			}
			if !found && !l.giveUpOn(seq, head) {
				return nil // retried at the next poll
			}
			p.notice, p.skip = n, !found
		}
		if !p.skip {
			onRemote(ctx, p.notice)
		}
		l.mu.Lock()
		l.addLocked(seq, p)
		l.mu.Unlock()
	}
	return nil
}

// giveUpOn reports whether a missing notice has been missing long enough to
// skip it. The wait counts from when a head read (up to head) first showed
// it reserved, so notices that went missing together — a group whose page
// write failed, or whose writer died — are skipped after one wait, not one
// each in turn.
func (l *Log) giveUpOn(seq, head uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if seq < l.missingSeq || seq > l.missingThrough {
		l.missingSeq, l.missingThrough, l.missingSince = seq, head, now
		return false
	}
	if now.Sub(l.missingSince) < missingNoticeWait {
		return false
	}
	l.log.Warn("skipping a notice that was reserved but never written", "seq", seq)
	return true
}

// followedNotice reads a notice the head no longer repeats for a follower
// that fell behind: from its page (read once per catch-up: pages holds
// what was read, by page), or from its own record where the page lacks it
// (a notice of an earlier version or of a replica with Options.Records, or
// whose page write has not landed yet).
func (l *Log) followedNotice(ctx context.Context, seq uint64, pages map[uint64]map[uint64]Notice) (Notice, bool, error) {
	l.mu.Lock()
	paged := seq >= l.pagedFrom
	l.mu.Unlock()
	if paged {
		p := seq / noticePageSize
		inPage, read := pages[p]
		if !read {
			inPage = make(map[uint64]Notice)
			notices, err := readPage(ctx, l.store, noticePageKey(p))
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return Notice{}, false, err
			}
			for _, n := range notices {
				inPage[n.seq] = n
			}
			pages[p] = inPage
		}
		if n, ok := inPage[seq]; ok {
			return n, true, nil
		}
	}
	return readRecord(ctx, l.store, seq)
}

// readRecord reads the record of its own a notice may have (found false
// when it has none).
func readRecord(ctx context.Context, s store.Store, seq uint64) (Notice, bool, error) {
	rec, err := s.Get(ctx, noticeKey(seq))
	if errors.Is(err, store.ErrNotFound) {
		return Notice{}, false, nil
	}
	if err != nil {
		return Notice{}, false, fmt.Errorf("broker: read notice: %w", err)
	}
	var n Notice
	var format int
	if err := jsonrec.Decode(rec.Value, &n, &format); err != nil {
		return Notice{}, false, err
	}
	n.seq = seq
	return n, true, nil
}

// cursorCodec turns sequence numbers into opaque cursors and back. A cursor
// is the sequence number and eight zero bytes, encrypted as one AES block
// under the log's key: deterministic (a notice has one cursor, whichever
// replica delivers it), unforgeable in practice (a made-up cursor decrypts
// to non-zero padding), and opaque, so a watcher filtered to some
// credentials cannot count the notices of others between two of its own.
type cursorCodec struct{ block cipher.Block }

const cursorPrefix = "c2"

func newCursorKey() []byte {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return k
}

func newCursorCodec(key []byte) (cursorCodec, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return cursorCodec{}, fmt.Errorf("broker: notice log cursor key: %w", err)
	}
	return cursorCodec{block: block}, nil
}

func (c cursorCodec) encode(seq uint64) string {
	var b [aes.BlockSize]byte
	binary.BigEndian.PutUint64(b[:8], seq)
	c.block.Encrypt(b[:], b[:])
	return cursorPrefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// decode returns *InvalidArgumentError for what is not a cursor at all, and
// ErrCursorExpired for a cursor of another notice log (or an older format).
func (c cursorCodec) decode(cursor string) (uint64, error) {
	if len(cursor) > 128 {
		return 0, brokererr.Invalid("cursor", "malformed")
	}
	enc, ok := strings.CutPrefix(cursor, cursorPrefix)
	if !ok {
		if raw, err := base64.RawURLEncoding.DecodeString(cursor); err == nil && strings.HasPrefix(string(raw), "1.") {
			return 0, fmt.Errorf("%w: a cursor of an older format; watch again without a cursor", ErrCursorExpired)
		}
		return 0, brokererr.Invalid("cursor", "malformed")
	}
	raw, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil || len(raw) != aes.BlockSize {
		return 0, brokererr.Invalid("cursor", "malformed")
	}
	var b [aes.BlockSize]byte
	c.block.Decrypt(b[:], raw)
	if binary.BigEndian.Uint64(b[8:]) != 0 {
		return 0, fmt.Errorf("%w: the cursor belongs to another notice log", ErrCursorExpired)
	}
	return binary.BigEndian.Uint64(b[:8]), nil
}

// Subscription is a stream of notices: first those missed since the cursor,
// then live ones. Not safe for concurrent use by several readers.
type Subscription struct {
	log *Log
	// StartCursor is the position after which every notice is delivered.
	StartCursor string
	filter      map[string]bool
	// replayLast is the last notice replayed rather than delivered live:
	// memReplay from the log's newest notices in memory, or store reading
	// the older ones (pages.go).
	replayLast uint64
	memReplay  []Notice
	store      *storeReplay
	// release gives back the store replay's slot; set before the
	// subscription is returned, so Close may call it from any goroutine.
	release func()
	// live holds the notices delivered and not yet taken by Next, at most
	// the log's buffer of them. A slice that grows with what is pending,
	// not a channel of the buffer's size: a channel allocates every slot
	// up front (about 40 KB for 256 notices), which 10,000 idle watchers
	// would hold for nothing. wake (capacity 1) tells Next there is more.
	wake chan struct{}
	mu   sync.Mutex // guards live, ended, err
	live []Notice
	// ended: no notice will be delivered any more; err says why.
	ended bool
	err   error
}

// Filter is the filter of a subscription to credentialIDs (nil, every
// credential, when empty): at most 1000 valid ids. Errors:
// *brokererr.InvalidArgumentError.
func Filter(credentialIDs []string) (map[string]bool, error) {
	if len(credentialIDs) > 1000 {
		return nil, brokererr.Invalid("credential_ids", "at most 1000")
	}
	var filter map[string]bool
	for _, id := range credentialIDs {
		if err := credid.Validate(id); err != nil {
			return nil, &brokererr.InvalidArgumentError{Field: "credential_ids", Reason: err.Error()}
		}
		if filter == nil {
			filter = make(map[string]bool)
		}
		filter[id] = true
	}
	return filter, nil
}

// Subscribe starts a subscription for the credentials in filter (all when
// nil), resuming after cursor when it is set. Errors:
// *brokererr.InvalidArgumentError, ErrCursorExpired, ErrTooManyReplays,
// *brokererr.UnavailableError, brokererr.ErrClosed.
func (l *Log) Subscribe(ctx context.Context, filter map[string]bool, cursor string) (*Subscription, error) {
	var from uint64
	resume := cursor != ""
	if resume {
		seq, err := l.cursors.decode(cursor)
		if err != nil {
			return nil, err
		}
		from = seq
	}
	s := &Subscription{log: l, filter: filter, wake: make(chan struct{}, 1)}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, brokererr.ErrClosed
	}
	// From here on every notice after last reaches s live; those up to it
	// are replayed: from memory when the ring holds them all, else from the
	// store.
	l.subs[s] = struct{}{}
	last, oldest := l.delivered, l.oldest
	inRing := resume && from < last && from+1 >= l.ringFrom
	if inRing {
		for _, r := range l.ring {
			if r.Seq > from && s.wants(r.Notice) {
				n := r.Notice
				n.seq, n.Cursor = r.Seq, l.cursors.encode(r.Seq)
				s.memReplay = append(s.memReplay, n)
			}
		}
	}
	l.mu.Unlock()
	if !resume {
		// "From now on" means from the log's head, which this replica's
		// follower may not have reached yet: watchers starting together
		// share one read of it.
		head, err := l.readHead(ctx)
		if err != nil {
			s.Close()
			return nil, brokererr.StoreUnavailable(err)
		}
		from = max(last, head)
	} else if from > last {
		// A cursor handed out by a replica further along the log than this
		// one's follower: valid if the log has reached it. Live notices up to
		// it are not sent again (see Next).
		meta, _, err := l.readMeta(ctx)
		if err != nil {
			s.Close()
			return nil, brokererr.StoreUnavailable(err)
		}
		if from > meta.NextSeq-1 {
			s.Close()
			return nil, brokererr.Invalid("cursor", "points past the end of the notice log")
		}
	}
	if from < last && from+1 < oldest {
		s.Close()
		return nil, fmt.Errorf("%w: oldest kept is %d notices after it", ErrCursorExpired, oldest-from-1)
	}
	if from < last && !inRing {
		r, err := l.startStoreReplay(ctx, from, last, filter)
		if err != nil {
			s.Close()
			return nil, err
		}
		s.store, s.release = r, r.release
	}
	s.StartCursor = l.cursors.encode(from)
	s.replayLast = max(from, last)
	return s, nil
}

// Next returns the next notice, waiting for one. Errors: the context's,
// ErrSubscriberTooSlow, ErrClosed, *UnavailableError (store trouble while
// replaying).
func (s *Subscription) Next(ctx context.Context) (Notice, error) {
	if len(s.memReplay) > 0 {
		n := s.memReplay[0]
		s.memReplay = s.memReplay[1:]
		return n, nil
	}
	if r := s.store; r != nil {
		ln, found, err := r.next(ctx, s.log, s.filter)
		if err != nil {
			return Notice{}, err // the next call resumes at the same page; Close frees the slot
		}
		if found {
			n := ln.Notice
			n.seq, n.Cursor = ln.Seq, s.log.cursors.encode(ln.Seq)
			return n, nil
		}
		s.store = nil
	}
	for {
		s.mu.Lock()
		if len(s.live) > 0 {
			n := s.live[0]
			s.live[0] = Notice{}
			s.live = s.live[1:]
			if len(s.live) == 0 {
				s.live = nil // give the array back once drained
			}
			s.mu.Unlock()
			// A live notice already replayed from the store is not sent twice.
			if n.seq > s.replayLast && s.wants(n) {
				return n, nil
			}
			continue
		}
		if s.ended {
			err := s.err
			s.mu.Unlock()
			return Notice{}, err
		}
		s.mu.Unlock()
		select {
		case <-s.wake:
		case <-ctx.Done():
			return Notice{}, ctx.Err()
		}
	}
}

func (s *Subscription) wants(n Notice) bool {
	return n.Kind.ForWatchers() && (s.filter == nil || s.filter[n.CredentialID])
}

// deliver is called with log.mu held.
func (s *Subscription) deliver(n Notice) {
	if !s.wants(n) {
		return
	}
	s.mu.Lock()
	full := len(s.live) >= s.log.buffer
	if !full {
		s.live = append(s.live, n)
	}
	s.mu.Unlock()
	if full {
		s.closeWith(ErrSubscriberTooSlow)
		return
	}
	s.signal()
}

// signal wakes a Next waiting for a notice or for the end.
func (s *Subscription) signal() {
	select {
	case s.wake <- struct{}{}:
	default: // a wake-up is pending already
	}
}

// closeWith ends the live part of the subscription; log.mu held.
func (s *Subscription) closeWith(err error) {
	if _, ok := s.log.subs[s]; !ok {
		return
	}
	delete(s.log.subs, s)
	s.mu.Lock()
	s.ended, s.err = true, err
	s.mu.Unlock()
	s.signal()
}

// Close ends the subscription.
func (s *Subscription) Close() {
	s.endReplay()
	s.log.mu.Lock()
	defer s.log.mu.Unlock()
	s.closeWith(brokererr.ErrClosed)
}

// endReplay gives back the subscription's replay slot, if it holds one.
func (s *Subscription) endReplay() {
	if s.release != nil {
		s.release()
	}
}

// Close ends every subscription (Next answers brokererr.ErrClosed) and refuses
// new ones; the log itself stays in the store.
func (l *Log) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	for s := range l.subs {
		s.closeWith(brokererr.ErrClosed)
	}
}

// Publish records a notice and delivers it. A notice that cannot be logged
// is still delivered live on this replica: the family's state is stored,
// and a watcher learns of it now rather than never.
func (l *Log) Publish(ctx context.Context, n Notice) {
	l.deliverUnlogged(ctx, n, l.Append(ctx, n))
}

// Start is Publish beside the caller's work: n takes its place in the log
// at once, after every notice started (or published) before it on this
// replica, and its writes run in a goroutine of their own. The caller owns
// that goroutine: it must call wait, which returns once the notice is
// logged (or delivered live). A notice that joins a group leads it or
// waits for its leader; either way the head's turn never waits for the
// caller.
func (l *Log) Start(ctx context.Context, n Notice) (wait func()) {
	g, i, lead := l.joinGroup(n)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.deliverUnlogged(ctx, n, l.appendJoined(ctx, n, g, i, lead))
	}()
	return func() { <-done }
}

// deliverUnlogged delivers n live on this replica when appending it failed
// (err).
func (l *Log) deliverUnlogged(ctx context.Context, n Notice, err error) {
	if err == nil {
		return
	}
	l.log.ErrorContext(ctx, "notice not logged; delivering it live on this replica only", "credential", n.CredentialID, "err", err)
	l.mu.Lock()
	defer l.mu.Unlock()
	n.Cursor = l.cursors.encode(l.delivered)
	for s := range l.subs {
		s.deliver(n)
	}
}

// Head is the sequence number of the log's newest notice, as the store
// says now.
func (l *Log) Head(ctx context.Context) (uint64, error) { return l.readHead(ctx) }

// Delivered is the sequence number up to which this replica has delivered
// every notice (its own and, once followed, other replicas').
func (l *Log) Delivered() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.delivered
}

// SubscriberCount is the number of live subscriptions on this process.
func (l *Log) SubscriberCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.subs)
}
