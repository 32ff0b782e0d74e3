package broker

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rotavault/rotavault/internal/credid"
	"github.com/rotavault/rotavault/store"
)

// NoticeKind says what happened to a family.
type NoticeKind int

const (
	NoticeFamilyRevoked NoticeKind = iota + 1
	NoticeFamilyActivated
)

// Notice reports a change of a credential's token family.
type Notice struct {
	CredentialID string           `json:"credential_id"`
	FamilyID     string           `json:"family_id"`
	Generation   uint64           `json:"generation"`
	Kind         NoticeKind       `json:"kind"`
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
// under notices/<seq>, oldest first; the epoch tells cursors of one log from
// another's.
type noticeLogMeta struct {
	Format    int    `json:"format"`
	Epoch     string `json:"epoch"`
	NextSeq   uint64 `json:"next_seq"`
	OldestSeq uint64 `json:"oldest_seq"`
}

// noticeLog persists notices in the store, for resuming, and fans them out
// to this process's subscribers.
type noticeLog struct {
	store     store.Store
	retention int
	buffer    int
	now       func() time.Time
	log       *slog.Logger

	// mu serialises appends with their broadcast, so subscribers see
	// notices in log order, and subscription with the replay boundary.
	mu      sync.Mutex
	epoch   string
	lastSeq uint64
	subs    map[*Subscription]struct{}
}

func newNoticeLog(s store.Store, retention, buffer int, now func() time.Time, log *slog.Logger) *noticeLog {
	return &noticeLog{store: s, retention: retention, buffer: buffer, now: now, log: log, subs: make(map[*Subscription]struct{})}
}

func noticeKey(seq uint64) string { return fmt.Sprintf("%s%020d", noticesPrefix, seq) }

func (l *noticeLog) init(ctx context.Context) error {
	for {
		meta, _, err := l.readMeta(ctx)
		if err == nil {
			l.epoch, l.lastSeq = meta.Epoch, meta.NextSeq-1
			return nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		var epoch [8]byte
		_, _ = rand.Read(epoch[:])
		fresh := noticeLogMeta{Format: recordFormat, Epoch: hex.EncodeToString(epoch[:]), NextSeq: 1, OldestSeq: 1}
		raw, err := encodeRecord(fresh)
		if err != nil {
			return err
		}
		if _, err := l.store.Put(ctx, noticeLogMetaKey, raw, 0); err != nil && !errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("broker: create notice log: %w", err)
		}
	}
}

func (l *noticeLog) readMeta(ctx context.Context) (noticeLogMeta, uint64, error) {
	rec, err := l.store.Get(ctx, noticeLogMetaKey)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return noticeLogMeta{}, 0, err
		}
		return noticeLogMeta{}, 0, fmt.Errorf("broker: read notice log: %w", err)
	}
	var meta noticeLogMeta
	if err := decodeRecord(rec.Value, &meta, &meta.Format); err != nil {
		return noticeLogMeta{}, 0, err
	}
	return meta, rec.Version, nil
}

// append stores n in the log, then delivers it to subscribers.
func (l *noticeLog) append(ctx context.Context, n Notice) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	raw, err := encodeRecord(n)
	if err != nil {
		return err
	}
	var meta noticeLogMeta
	for {
		m, version, err := l.readMeta(ctx)
		if err != nil {
			return err
		}
		meta = m
		next := meta
		next.NextSeq++
		if keep := uint64(l.retention); next.NextSeq-next.OldestSeq > keep {
			next.OldestSeq = next.NextSeq - keep
		}
		rawMeta, err := encodeRecord(next)
		if err != nil {
			return err
		}
		if _, err := l.store.Put(ctx, noticeLogMetaKey, rawMeta, version); err != nil {
			if errors.Is(err, store.ErrConflict) {
				continue
			}
			return fmt.Errorf("broker: reserve notice: %w", err)
		}
		n.seq = meta.NextSeq
		for seq := meta.OldestSeq; seq < next.OldestSeq; seq++ {
			if err := l.store.Delete(ctx, noticeKey(seq)); err != nil {
				l.log.WarnContext(ctx, "could not prune notice", "seq", seq, "err", err)
			}
		}
		break
	}
	if _, err := l.store.Put(ctx, noticeKey(n.seq), raw, 0); err != nil {
		return fmt.Errorf("broker: store notice: %w", err)
	}
	n.Cursor = encodeCursor(meta.Epoch, n.seq)
	l.lastSeq = n.seq
	for s := range l.subs {
		s.deliver(n)
	}
	return nil
}

func encodeCursor(epoch string, seq uint64) string {
	return base64.RawURLEncoding.EncodeToString([]byte("1." + epoch + "." + strconv.FormatUint(seq, 10)))
}

func decodeCursor(c string) (epoch string, seq uint64, err error) {
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(c) > 128 {
		return "", 0, invalid("cursor", "malformed")
	}
	parts := strings.Split(string(raw), ".")
	if len(parts) != 3 || parts[0] != "1" {
		return "", 0, invalid("cursor", "malformed")
	}
	seq, err = strconv.ParseUint(parts[2], 10, 64)
	if err != nil {
		return "", 0, invalid("cursor", "malformed")
	}
	return parts[1], seq, nil
}

// Subscription is a stream of notices: first those missed since the cursor,
// then live ones. Not safe for concurrent use by several readers.
type Subscription struct {
	log *noticeLog
	// StartCursor is the position after which every notice is delivered.
	StartCursor string
	filter      map[string]bool
	replayNext  uint64
	replayLast  uint64
	ch          chan Notice
	mu          sync.Mutex
	err         error // why ch was closed
}

// Subscribe starts a subscription for the given credentials (all when
// empty), resuming after cursor when it is set. Errors:
// *InvalidArgumentError, ErrCursorExpired, *UnavailableError.
func (b *Broker) Subscribe(ctx context.Context, credentialIDs []string, cursor string) (*Subscription, error) {
	if len(credentialIDs) > 1000 {
		return nil, invalid("credential_ids", "at most 1000")
	}
	var filter map[string]bool
	for _, id := range credentialIDs {
		if err := credid.Validate(id); err != nil {
			return nil, &InvalidArgumentError{Field: "credential_ids", Reason: err.Error()}
		}
		if filter == nil {
			filter = make(map[string]bool)
		}
		filter[id] = true
	}
	l := b.notices
	var from uint64
	resume := cursor != ""
	if resume {
		epoch, seq, err := decodeCursor(cursor)
		if err != nil {
			return nil, err
		}
		if epoch != l.epoch {
			return nil, fmt.Errorf("%w: the cursor belongs to another notice log", ErrCursorExpired)
		}
		from = seq
	}
	s := &Subscription{log: l, filter: filter, ch: make(chan Notice, l.buffer)}
	l.mu.Lock()
	if b.closed.Load() {
		l.mu.Unlock()
		return nil, ErrClosed
	}
	l.subs[s] = struct{}{}
	last := l.lastSeq
	// Other replicas append to the same log: replay up to its stored head,
	// so a cursor handed out by another replica resumes here too.
	meta, _, err := l.readMeta(ctx)
	if err == nil && meta.NextSeq-1 > last {
		last = meta.NextSeq - 1
	}
	l.mu.Unlock()
	if err != nil {
		s.Close()
		return nil, storeUnavailable(err)
	}
	if !resume {
		from = last
	}
	if from > last {
		s.Close()
		return nil, invalid("cursor", "points past the end of the notice log")
	}
	if resume && from < last {
		if from+1 < meta.OldestSeq {
			s.Close()
			return nil, fmt.Errorf("%w: oldest kept is %d notices after it", ErrCursorExpired, meta.OldestSeq-from-1)
		}
	}
	s.StartCursor = encodeCursor(l.epoch, from)
	s.replayNext, s.replayLast = from+1, last
	return s, nil
}

// Next returns the next notice, waiting for one. Errors: the context's,
// ErrSubscriberTooSlow, ErrClosed, *UnavailableError (store trouble while
// replaying).
func (s *Subscription) Next(ctx context.Context) (Notice, error) {
	for s.replayNext <= s.replayLast {
		seq := s.replayNext
		rec, err := s.log.store.Get(ctx, noticeKey(seq))
		if errors.Is(err, store.ErrNotFound) {
			s.replayNext++ // a reserved slot whose writer died, or pruned meanwhile
			continue
		}
		if err != nil {
			return Notice{}, storeUnavailable(err)
		}
		s.replayNext++
		var n Notice
		var format int
		if err := decodeRecord(rec.Value, &n, &format); err != nil {
			return Notice{}, err
		}
		n.seq = seq
		n.Cursor = encodeCursor(s.log.epoch, seq)
		if s.wants(n) {
			return n, nil
		}
	}
	for {
		select {
		case n, ok := <-s.ch:
			if !ok {
				s.mu.Lock()
				defer s.mu.Unlock()
				return Notice{}, s.err
			}
			// A live notice already replayed from the store is not sent twice.
			if n.seq > s.replayLast && s.wants(n) {
				return n, nil
			}
		case <-ctx.Done():
			return Notice{}, ctx.Err()
		}
	}
}

func (s *Subscription) wants(n Notice) bool {
	return s.filter == nil || s.filter[n.CredentialID]
}

// deliver is called with log.mu held.
func (s *Subscription) deliver(n Notice) {
	if !s.wants(n) {
		return
	}
	select {
	case s.ch <- n:
	default:
		s.closeWith(ErrSubscriberTooSlow)
	}
}

// closeWith ends the live part of the subscription; log.mu held.
func (s *Subscription) closeWith(err error) {
	if _, ok := s.log.subs[s]; !ok {
		return
	}
	delete(s.log.subs, s)
	s.mu.Lock()
	s.err = err
	s.mu.Unlock()
	close(s.ch)
}

// Close ends the subscription.
func (s *Subscription) Close() {
	s.log.mu.Lock()
	defer s.log.mu.Unlock()
	s.closeWith(ErrClosed)
}

func (l *noticeLog) closeSubscribers() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for s := range l.subs {
		s.closeWith(ErrClosed)
	}
}

// notify records a notice and delivers it. A notice that cannot be stored is
// still delivered live: the family's state is stored, and a watcher learns
// of it now rather than never.
func (b *Broker) notify(ctx context.Context, n Notice) {
	err := b.notices.append(ctx, n)
	if err == nil {
		return
	}
	b.log.ErrorContext(ctx, "notice not stored; delivering it live only", "credential", n.CredentialID, "err", err)
	l := b.notices
	l.mu.Lock()
	defer l.mu.Unlock()
	n.Cursor = encodeCursor(l.epoch, l.lastSeq)
	for s := range l.subs {
		s.deliver(n)
	}
}

// SubscriberCount is the number of live subscriptions on this process.
func (b *Broker) SubscriberCount() int {
	b.notices.mu.Lock()
	defer b.notices.mu.Unlock()
	return len(b.notices.subs)
}
