package audit

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/rotavault/rotavault/internal/fsutil"
	"github.com/rotavault/rotavault/store"
)

const (
	// KeyRecord is the store record holding the trail's HMAC key.
	KeyRecord = "audit/key"
	// DefaultHeadKey is the store record anchoring the chain head when
	// Config.HeadKey is empty. Several nodes writing their own files into
	// one store (Vault replicas) need a head key each.
	DefaultHeadKey = "audit/head"

	// anchorTimeout bounds one anchor write. It runs on a context of its
	// own: a caller giving up must not leave the head behind for nothing.
	anchorTimeout = 5 * time.Second
	// DefaultAnchorInterval bounds the window in which the newest records
	// could be truncated undetected.
	DefaultAnchorInterval = time.Second
	// tailWindow is how much of the file's end Open reads to find the last
	// record; a longer last line falls back to a full verification.
	tailWindow = 64 << 10
)

// Config says where the trail lives.
type Config struct {
	// Path is the JSON-lines file (created with mode 0600 on first use).
	Path string
	// Store holds the HMAC key (KeyRecord) and the anchored head.
	Store store.Store
	// HeadKey is the store record anchoring this file's head
	// (DefaultHeadKey if empty).
	HeadKey string
	// Logger reports lagging anchors; nil discards.
	Logger *slog.Logger
	// AnchorInterval is how often, at most, the head is anchored in the
	// store (DefaultAnchorInterval if zero). Anchoring runs in the
	// background, off the path of the rotation that records an event:
	// with Vault as the store, an anchor per record would add a third
	// Vault write to every rotation. The price is a window: records newer
	// than the last anchor are protected against editing (they chain) but
	// not against being cut off the tail. A negative interval anchors
	// every record before Record returns: no window, one more store write
	// per record.
	AnchorInterval time.Duration
	// AcceptMissingAnchor lets Open continue a trail whose anchored head
	// is missing from the store (deleted: the head is written with the
	// key, so nothing else removes it). The file's chain must still hold;
	// Open anchors its last record and records the acceptance in the
	// trail (ActionAnchorMissingAccepted). Records cut off the end before
	// that are not detected, except against a witness.
	AcceptMissingAnchor bool
	// Witness, when set, receives every head anchored in the store as a
	// signed line (see WitnessLine), after the store accepted it. Ship it
	// where whoever can write the store cannot rewrite it (another host's
	// log, an append-only file); Verify with CheckWitness then detects a
	// store rolled back to an earlier copy. A failed write is logged.
	Witness io.Writer
	// CheckWitness, for Verify only, is the witness's lines: the store's
	// anchored head must not be older than the newest one it holds for
	// this head key, and the file must reach and match it.
	CheckWitness io.Reader
}

func (c Config) headKey() string {
	if c.HeadKey == "" {
		return DefaultHeadKey
	}
	return c.HeadKey
}

// FileLog appends events to the hash-chained file and anchors its head in
// the store. Safe for concurrent use.
type FileLog struct {
	st      store.Store
	path    string
	headKey string
	key     *macKey
	log     *slog.Logger

	// mu guards the file and the chain position: seq and mac are the last
	// durable record (what is anchored and verified), tailSeq and tailMAC
	// the last one chained, perhaps still in a batch being written.
	mu      sync.Mutex
	file    *os.File
	size    int64
	seq     uint64
	mac     MAC
	tailSeq uint64
	tailMAC MAC
	// The batches (see Record): open is the one new records join, writing
	// whether one is being written, waiting those queued for their turn,
	// oldest first; idle is signalled when none is being written. closing
	// refuses new records while Close waits for the last batch.
	open        *syncBatch
	writing     bool
	waiting     []*syncBatch
	idle        *sync.Cond
	closing     bool
	beforeWrite func() error // tests only: runs before each batch's write; an error fails it
	// broken is set when a failed write may have left a partial line:
	// appending after it would corrupt the chain, so nothing more is
	// written.
	broken error

	// anchorMu serialises anchor writes; the fields below are its.
	anchorMu    sync.Mutex
	anchoredSeq uint64
	headVersion uint64
	// tried is the last head written whose outcome is unknown: a conflict
	// on the next write may be that write having succeeded.
	tried []byte
	// witness receives each anchored head (nil: none).
	witness io.Writer

	// The anchoring goroutine: dirty wakes it, stop ends it, stopped
	// tells Close it has ended.
	interval time.Duration
	dirty    chan struct{}
	stop     chan struct{}
	stopped  chan struct{}
	stopOnce sync.Once
}

// Open opens (or creates) the trail, continuing the chain anchored in the
// store. It refuses a file that does not reach or match the anchored head:
// the error wraps ErrChainBroken and names the record.
func Open(ctx context.Context, cfg Config) (*FileLog, error) {
	if cfg.Store == nil || cfg.Path == "" {
		return nil, errors.New("audit: open: Config.Path and Config.Store are required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fi, statErr := os.Stat(cfg.Path)
	created := errors.Is(statErr, fs.ErrNotExist)
	key, err := loadKey(ctx, cfg.Store)
	headCreated := false
	if errors.Is(err, store.ErrNotFound) {
		if statErr == nil && fi.Size() > 0 {
			// A new key could never verify the records already there.
			return nil, fmt.Errorf("audit: open %s: %w", cfg.Path, &ChainError{Line: 1, Seq: 1, Problem: ProblemNoKey,
				Detail: "the file holds records but the store has no audit key (" + KeyRecord + "): is this the store that wrote the trail?"})
		}
		// The first anchor (seq 0) is written before the key, so that a key
		// without a head can only mean the head was deleted.
		if headCreated, err = createHead(ctx, cfg.Store, cfg.headKey()); err != nil {
			return nil, err
		}
		key, err = createKey(ctx, cfg.Store)
	}
	if err != nil {
		return nil, err
	}
	anchor, version, err := readHead(ctx, cfg.Store, cfg.headKey())
	if err != nil {
		return nil, err
	}
	accepted := false
	if anchor == nil {
		records := statErr == nil && fi.Size() > 0
		switch {
		case !records && cfg.headKey() != DefaultHeadKey:
			// A replica's first start in a store other replicas write:
			// its own seq 0 is anchored below.
		case cfg.AcceptMissingAnchor:
			accepted = true
			log.Warn("audit: the store anchors no head for this trail; accepted by the operator, anchoring the file's last record",
				"path", cfg.Path, "head_key", cfg.headKey())
		default:
			return nil, fmt.Errorf("audit: open %s: %w", cfg.Path, missingAnchor(cfg, records))
		}
	}
	if created && anchor != nil && anchor.Seq > 0 {
		return nil, fmt.Errorf("audit: open %s: %w", cfg.Path, &ChainError{Line: 1, Seq: 1, Problem: ProblemMissing,
			Detail: fmt.Sprintf("the store anchors seq %d; refusing to start a new chain", anchor.Seq)})
	}
	f, err := os.OpenFile(cfg.Path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: open: %w", err)
	}
	interval := cfg.AnchorInterval
	if interval == 0 {
		interval = DefaultAnchorInterval
	}
	l := &FileLog{st: cfg.Store, path: cfg.Path, headKey: cfg.headKey(), key: key, log: log, file: f, headVersion: version, witness: cfg.Witness,
		interval: interval, dirty: make(chan struct{}, 1), stop: make(chan struct{}), stopped: make(chan struct{})}
	l.idle = sync.NewCond(&l.mu)
	if anchor != nil {
		l.anchoredSeq = anchor.Seq
	}
	if err := l.resume(ctx, anchor); err != nil {
		f.Close()
		return nil, fmt.Errorf("audit: open %s: refusing to continue the trail: %w", cfg.Path, err)
	}
	if created {
		// The file is synced on every record, but its directory entry is
		// not: without this a power loss could lose the whole new file.
		if err := fsutil.SyncDir(filepath.Dir(cfg.Path)); err != nil {
			f.Close()
			return nil, fmt.Errorf("audit: open: %w", err)
		}
	}
	switch {
	case anchor == nil:
		// A new replica's seq 0, or the accepted file's last record.
		if err := l.anchor(ctx, l.seq); err != nil {
			f.Close()
			return nil, err
		}
	case headCreated:
		// Created with the key: the witness learns of it too.
		l.writeWitness(*anchor)
	case l.seq > l.anchoredSeq:
		log.Warn("audit: the file extends past the anchored head; anchoring it now",
			"path", cfg.Path, "records", l.seq, "anchored_seq", l.anchoredSeq)
		_ = l.anchor(ctx, l.seq)
	}
	go l.anchorLoop()
	if accepted {
		err := l.Record(ctx, Event{Time: time.Now(), Actor: Actor(ctx), Action: ActionAnchorMissingAccepted,
			Detail: fmt.Sprintf("the store anchored no head (%s) for this trail of %d records; the operator accepted it and it is anchored again from here: records cut off the end before this one would not have been detected", l.headKey, l.seq)})
		if err != nil {
			_ = l.Close()
			return nil, err
		}
	}
	return l, nil
}

// anchorLoop anchors the head after records were written, at most once per
// interval, until Close.
func (l *FileLog) anchorLoop() {
	defer close(l.stopped)
	for {
		select {
		case <-l.stop:
			return
		case <-l.dirty:
		}
		l.mu.Lock()
		seq := l.seq
		l.mu.Unlock()
		_ = l.anchor(context.Background(), seq)
		t := time.NewTimer(l.interval)
		select {
		case <-l.stop:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// Anchor writes the current head to the store now (if it is not already
// there) and returns the store's error. Records are anchored in the
// background anyway; Anchor is for callers that need the head anchored
// before they go on.
func (l *FileLog) Anchor(ctx context.Context) error {
	l.mu.Lock()
	seq := l.seq
	l.mu.Unlock()
	return l.anchor(ctx, seq)
}

// resume finds the chain's last record. The fast path reads only the
// tail: it suffices when the last record is the anchored head.
func (l *FileLog) resume(ctx context.Context, anchor *Head) error {
	fi, err := l.file.Stat()
	if err != nil {
		return err
	}
	l.size = fi.Size()
	if l.size == 0 {
		if anchor != nil && anchor.Seq > 0 {
			return &ChainError{Line: 1, Seq: 1, Problem: ProblemTruncated,
				Detail: fmt.Sprintf("the file is empty but the store anchors seq %d", anchor.Seq)}
		}
		return nil
	}
	if anchor != nil {
		if last, ok := l.readLast(anchor); ok {
			l.seq, l.mac = last.body.Seq, last.mac
			l.tailSeq, l.tailMAC = l.seq, l.mac
			return nil
		}
	}
	rep, err := verify(ctx, io.NewSectionReader(l.file, 0, l.size), l.key, anchor, nil)
	if err != nil {
		return err
	}
	l.seq, l.mac = rep.Last.Seq, rep.lastMAC
	l.tailSeq, l.tailMAC = l.seq, l.mac
	return nil
}

// readLast reports the last record if it is exactly the anchored head
// and its mac holds.
func (l *FileLog) readLast(anchor *Head) (parsedRecord, bool) {
	n := min(l.size, tailWindow)
	buf := make([]byte, n)
	if _, err := l.file.ReadAt(buf, l.size-n); err != nil {
		return parsedRecord{}, false
	}
	if buf[len(buf)-1] != '\n' {
		return parsedRecord{}, false
	}
	buf = buf[:len(buf)-1]
	i := bytes.LastIndexByte(buf, '\n')
	if i < 0 && n < l.size {
		return parsedRecord{}, false
	}
	r, err := parseLine(l.key, buf[i+1:], 0, 0)
	if err != nil || r.body.Seq != anchor.Seq || r.mac.String() != anchor.MAC {
		return parsedRecord{}, false
	}
	return r, true
}

// Record appends e and syncs the file, so a record survives a crash once
// Record returned nil. The new head is anchored in the store in the
// background (Config.AnchorInterval); a failed anchor write is logged and
// retried with the next record or at Close.
//
// Records made concurrently share one write and one fsync (a batch): the
// chain orders them as they arrive, the first of a batch writes it once the
// previous batch is synced, and each returns when its batch is durable.
// With one fsync per record, every rotation and onboarding on a node waited
// in a single queue for the disk.
func (l *FileLog) Record(ctx context.Context, e Event) error {
	b, seq, lead, err := l.enqueue(e)
	if err != nil {
		return err
	}
	if lead {
		<-b.turn
		l.writeBatch(b)
	}
	return l.finish(ctx, b, seq)
}

// Start is Record beside the caller's work: e takes its place in the
// chain at once, after every record started or recorded before it, and is
// written with its batch while the caller goes on; wait returns what
// Record would have, once the record is durable. The caller must call
// wait. A record leading its batch writes it in a goroutine of its own,
// so later batches never wait for the caller; Close waits for it.
func (l *FileLog) Start(ctx context.Context, e Event) (wait func() error) {
	b, seq, lead, err := l.enqueue(e)
	if err != nil {
		return func() error { return err }
	}
	if lead {
		go func() {
			<-b.turn
			l.writeBatch(b)
		}()
	}
	return func() error { return l.finish(ctx, b, seq) }
}

// enqueue chains e after the last record and adds it to the open batch
// (lead: e opened it, and its caller writes it).
func (l *FileLog) enqueue(e Event) (b *syncBatch, seq uint64, lead bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file == nil || l.closing {
		return nil, 0, false, errors.New("audit: closed")
	}
	if l.broken != nil {
		return nil, 0, false, fmt.Errorf("audit: an earlier write failed, the trail needs attention: %w", l.broken)
	}
	seq = l.tailSeq + 1
	line, mac, err := encodeRecord(l.key, seq, l.tailMAC, e)
	if err != nil {
		return nil, 0, false, err
	}
	b, lead = l.batchFor(len(line))
	b.lines = append(b.lines, line...)
	b.last, b.lastMAC = seq, mac
	l.tailSeq, l.tailMAC = seq, mac
	return b, seq, lead, nil
}

// finish waits for b, holding record seq, to be durable, then has the
// head anchored.
func (l *FileLog) finish(ctx context.Context, b *syncBatch, seq uint64) error {
	<-b.done
	if b.err != nil {
		return b.err
	}
	if l.interval < 0 {
		// A failure is logged by anchor; the record itself is durable.
		_ = l.anchor(ctx, seq)
		return nil
	}
	select {
	case l.dirty <- struct{}{}:
	default: // a wake-up is already pending; it covers this record
	}
	return nil
}

// maxBatchBytes bounds one batch's write.
const maxBatchBytes = 1 << 20

// syncBatch is records written and synced together (see Record).
type syncBatch struct {
	lines   []byte
	last    uint64
	lastMAC MAC
	// turn is closed when the batch may write: the previous one is synced.
	turn chan struct{}
	// done is closed when the batch is durable, or failed (err).
	done chan struct{}
	err  error
}

// batchFor returns the open batch a record of n bytes joins, opening one
// (led by this record) when there is none or it is full; mu held.
func (l *FileLog) batchFor(n int) (b *syncBatch, lead bool) {
	if b = l.open; b != nil && len(b.lines)+n <= maxBatchBytes {
		return b, false
	}
	b = &syncBatch{turn: make(chan struct{}), done: make(chan struct{})}
	if l.writing {
		l.waiting = append(l.waiting, b)
	} else {
		l.writing = true
		close(b.turn)
	}
	l.open = b
	return b, true
}

// writeBatch writes and syncs b, then hands the file to the next batch. A
// failure cuts the file back to its last durable record and fails every
// batch queued behind b too: their records chain on b's.
func (l *FileLog) writeBatch(b *syncBatch) {
	l.mu.Lock()
	if l.open == b {
		l.open = nil // sealed: later records open the next batch
	}
	f, size, failed := l.file, l.size, b.err
	l.mu.Unlock()
	if failed == nil {
		if f == nil {
			failed = errors.New("audit: closed")
		} else {
			failed = l.writeSynced(f, size, b.lines)
		}
	}
	l.mu.Lock()
	if failed == nil {
		l.size += int64(len(b.lines))
		l.seq, l.mac = b.last, b.lastMAC
	} else {
		b.err = failed
		for _, w := range l.waiting {
			w.err = failed
		}
		l.open = nil
		l.tailSeq, l.tailMAC = l.seq, l.mac
	}
	if len(l.waiting) > 0 {
		close(l.waiting[0].turn)
		l.waiting = l.waiting[1:]
	} else {
		l.writing = false
		l.idle.Broadcast()
	}
	l.mu.Unlock()
	close(b.done)
}

// writeSynced writes and syncs lines at the end of f, which holds size
// durable bytes. A failure cuts the file back to size; if even that fails
// the log is marked broken.
func (l *FileLog) writeSynced(f *os.File, size int64, lines []byte) error {
	var err error
	if l.beforeWrite != nil {
		err = l.beforeWrite()
	}
	if err == nil {
		_, err = f.Write(lines)
	}
	if err == nil {
		err = f.Sync()
		if err != nil {
			err = fmt.Errorf("audit: sync: %w", err)
		}
	} else {
		err = fmt.Errorf("audit: write: %w", err)
	}
	if err == nil {
		return nil
	}
	if terr := f.Truncate(size); terr != nil {
		broken := errors.Join(err, fmt.Errorf("audit: truncate after failed write: %w", terr))
		l.mu.Lock()
		l.broken = broken
		l.mu.Unlock()
		return broken
	}
	return err
}

// anchor writes the current head to the store unless an anchor already
// covers seq. Callers queue on anchorMu while a write is in flight, and
// the next write then covers all of them: one store write per burst, not
// per record.
func (l *FileLog) anchor(ctx context.Context, seq uint64) error {
	l.anchorMu.Lock()
	defer l.anchorMu.Unlock()
	if l.anchoredSeq >= seq && l.headVersion != 0 {
		return nil // anchored already (version 0: no head record yet)
	}
	l.mu.Lock()
	head := Head{Seq: l.seq, MAC: l.mac.String()}
	l.mu.Unlock()
	value, err := json.Marshal(head)
	if err != nil {
		l.log.Error("audit: encode head", "err", err)
		return fmt.Errorf("audit: encode head: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), anchorTimeout)
	defer cancel()
	version, err := l.st.Put(ctx, l.headKey, value, l.headVersion)
	if errors.Is(err, store.ErrConflict) && l.tried != nil {
		// An earlier write whose answer was lost may have succeeded:
		// if the store holds it, this node is still the only writer.
		if rec, gerr := l.st.Get(ctx, l.headKey); gerr == nil && bytes.Equal(rec.Value, l.tried) {
			l.headVersion = rec.Version
			version, err = l.st.Put(ctx, l.headKey, value, l.headVersion)
		}
	}
	if err != nil {
		if !errors.Is(err, store.ErrConflict) {
			l.tried = value
		}
		l.log.Error("audit: chain head not anchored in the store; the record is in the file and the head lags until a later write succeeds",
			"head_key", l.headKey, "seq", head.Seq, "anchored_seq", l.anchoredSeq, "err", err)
		return fmt.Errorf("audit: anchoring the chain head: %w", err)
	}
	l.tried = nil
	l.headVersion = version
	l.anchoredSeq = head.Seq
	l.writeWitness(head)
	return nil
}

// Head returns the chain's last record and the seq anchored in the store.
func (l *FileLog) Head() (last Head, anchoredSeq uint64) {
	l.anchorMu.Lock()
	anchoredSeq = l.anchoredSeq
	l.anchorMu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	return Head{Seq: l.seq, MAC: l.mac.String()}, anchoredSeq
}

// Close makes a last attempt to anchor a lagging head, then closes the
// file.
func (l *FileLog) Close() error {
	l.mu.Lock()
	open := l.file != nil
	// Records already batched are written; new ones are refused.
	l.closing = true
	for l.writing {
		l.idle.Wait()
	}
	l.mu.Unlock()
	if !open {
		return nil
	}
	l.stopOnce.Do(func() { close(l.stop) })
	<-l.stopped
	_ = l.Anchor(context.Background())
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file == nil {
		return nil
	}
	err := l.file.Close()
	l.file = nil
	return err
}

// VerifyOnline checks the trail this FileLog writes while it goes on
// writing, as Verify does offline: against the head anchored in the store
// and, when witness is not nil, against the witness's lines. The anchor and
// the witness are read while no anchor is written (a head anchored between
// the two reads would look like a rollback); the file is read up to the
// last whole record written at that moment, which reaches the anchor.
// Records written meanwhile are left for the next check. It returns a
// *ChainError (wrapping ErrChainBroken) naming the first broken record.
func (l *FileLog) VerifyOnline(ctx context.Context, witness io.Reader) (Report, error) {
	l.anchorMu.Lock()
	anchor, _, err := readHead(ctx, l.st, l.headKey)
	var witnessed *Head
	if err == nil && witness != nil {
		witnessed, err = checkWitness(witness, l.key, l.headKey, anchor)
	}
	l.mu.Lock()
	size := l.size
	l.mu.Unlock()
	l.anchorMu.Unlock()
	if err != nil {
		return Report{Anchor: anchor, Witnessed: witnessed}, err
	}
	f, err := os.Open(l.path)
	if err != nil {
		return Report{Anchor: anchor}, fmt.Errorf("audit: verify: %w", err)
	}
	defer f.Close()
	rep, err := verify(ctx, io.LimitReader(f, size), l.key, anchor, witnessed)
	rep.Witnessed = witnessed
	if err == nil && anchor == nil {
		return rep, missingAnchor(Config{HeadKey: l.headKey}, rep.Records > 0)
	}
	return rep, err
}

// Verify checks the whole trail at cfg.Path against the key and the head
// anchored in cfg.Store, without writing anything. It returns a
// *ChainError (wrapping ErrChainBroken) naming the first broken record.
func Verify(ctx context.Context, cfg Config) (Report, error) {
	if cfg.Store == nil || cfg.Path == "" {
		return Report{}, errors.New("audit: verify: Config.Path and Config.Store are required")
	}
	anchor, _, err := readHead(ctx, cfg.Store, cfg.headKey())
	if err != nil {
		return Report{}, err
	}
	key, keyErr := loadKey(ctx, cfg.Store)
	if keyErr != nil && !errors.Is(keyErr, store.ErrNotFound) {
		return Report{}, keyErr
	}
	f, err := os.Open(cfg.Path)
	if errors.Is(err, fs.ErrNotExist) {
		switch {
		case anchor != nil && anchor.Seq > 0:
			return Report{Anchor: anchor}, &ChainError{Line: 1, Seq: 1, Problem: ProblemMissing,
				Detail: fmt.Sprintf("%s does not exist, but the store anchors seq %d", cfg.Path, anchor.Seq)}
		case anchor == nil && keyErr == nil && cfg.headKey() == DefaultHeadKey:
			return Report{}, missingAnchor(cfg, false)
		}
		return Report{Anchor: anchor}, fmt.Errorf("audit: verify: no trail (nothing written yet?): %w", err)
	}
	if err != nil {
		return Report{}, fmt.Errorf("audit: verify: %w", err)
	}
	defer f.Close()
	if keyErr != nil {
		return Report{Anchor: anchor}, &ChainError{Line: 1, Seq: 1, Problem: ProblemNoKey,
			Detail: "the store holds no audit key (" + KeyRecord + "): is this the store that wrote the trail?"}
	}
	var witnessed *Head
	if cfg.CheckWitness != nil {
		if witnessed, err = checkWitness(cfg.CheckWitness, key, cfg.headKey(), anchor); err != nil {
			return Report{Anchor: anchor, Witnessed: witnessed}, err
		}
	}
	rep, err := verify(ctx, f, key, anchor, witnessed)
	rep.Witnessed = witnessed
	if err == nil && anchor == nil && (rep.Records > 0 || cfg.headKey() == DefaultHeadKey) {
		return rep, missingAnchor(cfg, rep.Records > 0)
	}
	return rep, err
}

// missingAnchor is the error for a store that anchors no head where it
// must: over records, or under DefaultHeadKey at all, since the first
// head is written with the audit key.
func missingAnchor(cfg Config, records bool) *ChainError {
	detail := "the store holds the audit key but no anchored head (" + cfg.headKey() + "), which is written with the key: it was deleted"
	if records {
		detail = "the trail holds records but the store anchors no head (" + cfg.headKey() + "): the head was deleted, so records cut off the end would go unnoticed"
	}
	return &ChainError{Line: 1, Seq: 1, Problem: ProblemNoAnchor, Detail: detail}
}

func loadKey(ctx context.Context, st store.Store) (*macKey, error) {
	rec, err := st.Get(ctx, KeyRecord)
	if err != nil {
		return nil, fmt.Errorf("audit: read key: %w", err)
	}
	defer clear(rec.Value)
	k := &macKey{}
	if len(rec.Value) != len(k.b) {
		return nil, fmt.Errorf("audit: the key record %s holds %d bytes, want %d", KeyRecord, len(rec.Value), len(k.b))
	}
	copy(k.b[:], rec.Value)
	return k, nil
}

// createHead anchors seq 0, create-only; it reports whether this call
// created it (false: a head was there already, a concurrent start's).
func createHead(ctx context.Context, st store.Store, key string) (bool, error) {
	value, err := json.Marshal(Head{Seq: 0, MAC: MAC{}.String()})
	if err != nil {
		return false, fmt.Errorf("audit: encode head: %w", err)
	}
	_, err = st.Put(ctx, key, value, 0)
	if errors.Is(err, store.ErrConflict) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("audit: anchor the first head: %w", err)
	}
	return true, nil
}

// createKey stores a new audit key. Create-only (version 0) makes
// concurrent first starts (replicas) agree on one key.
func createKey(ctx context.Context, st store.Store) (*macKey, error) {
	k := &macKey{}
	if _, err := rand.Read(k.b[:]); err != nil {
		return nil, fmt.Errorf("audit: generate key: %w", err)
	}
	_, err := st.Put(ctx, KeyRecord, k.b[:], 0)
	if errors.Is(err, store.ErrConflict) {
		return loadKey(ctx, st)
	}
	if err != nil {
		return nil, fmt.Errorf("audit: store key: %w", err)
	}
	return k, nil
}

// readHead returns the anchored head and its record version; nil, 0 when
// none is anchored.
func readHead(ctx context.Context, st store.Store, key string) (*Head, uint64, error) {
	rec, err := st.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("audit: read head %s: %w", key, err)
	}
	var h Head
	if err := json.Unmarshal(rec.Value, &h); err != nil {
		return nil, 0, fmt.Errorf("audit: head record %s: %w", key, err)
	}
	return &h, rec.Version, nil
}
