package notice

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/internal/jsonrec"
	"github.com/rotavault/rotavault/store"
)

// The notice log's test harness: a replica's log run as the broker runs it
// (initialised on a store, following it until the test ends), and a store
// wrapper that counts reads and fails the reads a test picks.

// replica is one replica's notice log. Its methods are the broker's, so
// tests read as the broker's callers see the log.
type replica struct {
	notices *Log
	opts    replicaOptions
	stop    func()
}

type replicaOptions struct {
	retention, buffer int
	poll              time.Duration
	records           bool
}

type replicaOption func(*replicaOptions)

// withRetention sets how many notices the log keeps (the broker's
// WithNoticeRetention).
func withRetention(n int) replicaOption { return func(o *replicaOptions) { o.retention = n } }

// withRecords writes every notice's own record too (the broker's
// WithNoticeRecords).
func withRecords() replicaOption { return func(o *replicaOptions) { o.records = true } }

// withPoll sets how often the replica reads the log's head (the broker's
// WithNoticePollInterval).
func withPoll(d time.Duration) replicaOption { return func(o *replicaOptions) { o.poll = d } }

// newReplica starts a replica's log on st with the broker's defaults,
// stopped when the test ends.
func newReplica(t *testing.T, st store.Store, opts ...replicaOption) *replica {
	t.Helper()
	o := replicaOptions{retention: 10000, buffer: 256, poll: 500 * time.Millisecond}
	for _, opt := range opts {
		opt(&o)
	}
	l := New(st, Options{Retention: o.retention, Buffer: o.buffer, Poll: o.poll, Records: o.records}, time.Now, slog.New(slog.DiscardHandler))
	if err := l.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Follow(ctx, func(context.Context, Notice) {})
	}()
	r := &replica{notices: l, opts: o}
	r.stop = sync.OnceFunc(func() {
		cancel()
		<-done
		l.Close()
	})
	t.Cleanup(r.stop)
	return r
}

// Subscribe subscribes to the given credentials' notices (all when none).
func (r *replica) Subscribe(ctx context.Context, ids []string, cursor string) (*Subscription, error) {
	var filter map[string]bool
	for _, id := range ids {
		if filter == nil {
			filter = make(map[string]bool)
		}
		filter[id] = true
	}
	return r.notices.Subscribe(ctx, filter, cursor)
}

func (r *replica) notify(ctx context.Context, n Notice) { r.notices.Publish(ctx, n) }

func (r *replica) SubscriberCount() int { return r.notices.SubscriberCount() }

// Close stops the replica as the broker's Close does.
func (r *replica) Close() error {
	r.stop()
	return nil
}

var errStoreDown = errors.New("faultstore: store unavailable (test)")

// pagedNotices is every notice in the log's pages, by sequence number.
func pagedNotices(t *testing.T, st store.Store) map[uint64]Notice {
	t.Helper()
	ctx := context.Background()
	keys, err := st.List(ctx, noticePagesPrefix)
	if err != nil {
		t.Fatal(err)
	}
	all := make(map[uint64]Notice)
	for _, k := range keys {
		notices, err := readPage(ctx, st, k)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range notices {
			all[n.seq] = n
		}
	}
	return all
}

// rewriteHeadAsEarlierVersion rewrites the log's head in st as a replica of
// a version before pages would: change edits it, and the fields that
// version does not know (PagedFrom, RecordsThrough) are dropped.
func rewriteHeadAsEarlierVersion(t *testing.T, st store.Store, change func(*noticeLogMeta)) {
	t.Helper()
	ctx := context.Background()
	rec, err := st.Get(ctx, HeadKey)
	if err != nil {
		t.Fatal(err)
	}
	var meta noticeLogMeta
	if err := jsonrec.Decode(rec.Value, &meta, &meta.Format); err != nil {
		t.Fatal(err)
	}
	change(&meta)
	meta.PagedFrom, meta.RecordsThrough = 0, nil
	raw, err := jsonrec.Encode(meta)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(ctx, HeadKey, raw, rec.Version); err != nil {
		t.Fatal(err)
	}
}

// faultStore counts a store's reads; a fault fails the reads it matches.
type faultStore struct {
	store.Store
	reads  atomic.Int64
	mu     sync.Mutex
	faults []*readFault
}

var _ store.Store = (*faultStore)(nil)

// readFault matches reads ("get") of keys under prefix for which match, when
// set, says yes, and fails them with fail (nil: the read goes on). once
// removes it after its first hit.
type readFault struct {
	op, prefix string
	match      func(key string, value []byte) bool
	once       bool
	fail       error
}

// inject adds f; the returned function removes it.
func (s *faultStore) inject(f *readFault) (remove func()) {
	s.mu.Lock()
	s.faults = append(s.faults, f)
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if i := slices.Index(s.faults, f); i >= 0 {
			s.faults = append(s.faults[:i], s.faults[i+1:]...)
		}
	}
}

func (s *faultStore) Get(ctx context.Context, key string) (store.Record, error) {
	s.reads.Add(1)
	s.mu.Lock()
	var fail error
	for i, f := range s.faults {
		if f.op == "get" && strings.HasPrefix(key, f.prefix) && (f.match == nil || f.match(key, nil)) {
			if f.once {
				s.faults = append(s.faults[:i], s.faults[i+1:]...)
			}
			fail = f.fail
			break
		}
	}
	s.mu.Unlock()
	if fail != nil {
		return store.Record{}, fail
	}
	return s.Store.Get(ctx, key)
}
