// Package bgload loads a replica's stored items (credentials) in the
// background while it serves, so that it answers as soon as the store
// answers: Run lists the items and loads each with a bounded number of
// workers, retrying with backoff what fails; Get loads an item a caller
// asks for before Run reached it. An item is read once however many
// callers and Run ask for it at the same time.
//
// Run loads every item whether or not a caller asks for it: work owed to
// an item (scheduled refreshes, early detection) must not wait for a
// caller.
package bgload

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/stats"
	"github.com/rotavault/rotavault/store"
)

// Config holds a Loader's dependencies and bounds. Every field is required.
type Config[T any] struct {
	// Store holds the items under Prefix; an item's id is its key without
	// it.
	Store  store.Store
	Prefix string
	// Context ends every load when it ends: the owner's lifetime.
	Context context.Context
	// Items holds the items in memory, guarded by ItemsMu: Load adds to
	// it, the Loader only reads it.
	Items   map[string]T
	ItemsMu *sync.RWMutex
	// Load reads an item from the store and puts it in Items. A load failing with
	// brokererr.ErrNotFound (deleted since the listing) counts as done.
	Load func(ctx context.Context, id string) (T, error)
	// Check says whether a loaded item can be served; an item it refuses
	// is kept, and an ERROR log says why once per load.
	Check func(T) error
	// Workers bounds Run's concurrent loads.
	Workers int
	// RetryBase is the wait after an item's first failed load, doubled
	// after each further one up to maxBackoff.
	RetryBase time.Duration
	Logger    *slog.Logger
}

// maxBackoff bounds the wait between an item's loads while the store is
// down.
const maxBackoff = 30 * time.Second

// loadTimeout bounds one load. A load runs detached from the caller that
// started it, so a caller giving up fails no one else waiting for it.
const loadTimeout = 30 * time.Second

// ErrStopped: Run stopped before every item was loaded.
var ErrStopped = errors.New("bgload: stopped before every item was loaded")

// Loader is the background load. Safe for concurrent use; create it with
// New.
type Loader[T any] struct {
	cfg   Config[T]
	start time.Time
	// done is closed when Run has loaded every listed item, stopped when
	// it returned without.
	done, stopped chan struct{}

	toLoad, loaded, failures, shared atomic.Int64
	listed                           atomic.Bool
	// warned is set while a load failure is logged and no load has
	// succeeded since: one warning per outage, not one per item.
	warned atomic.Bool

	mu    sync.Mutex
	calls map[string]*call[T]
}

// call is one load that any number of callers wait for.
type call[T any] struct {
	done chan struct{}
	v    T
	err  error
}

// New returns a Loader; its clock for Run's duration starts now.
func New[T any](cfg Config[T]) *Loader[T] {
	return &Loader[T]{cfg: cfg, start: time.Now(), done: make(chan struct{}), stopped: make(chan struct{}), calls: make(map[string]*call[T])}
}

// Await waits until Run has loaded every item listed. Errors: ctx's, or
// ErrStopped.
func (l *Loader[T]) Await(ctx context.Context) error {
	select {
	case <-l.done:
		return nil
	case <-l.stopped:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stats reports the load's progress.
func (l *Loader[T]) Stats() stats.Loading {
	return stats.Loading{Listed: l.listed.Load(), ToLoad: l.toLoad.Load(), Loaded: l.loaded.Load(),
		Failures: l.failures.Load(), Shared: l.shared.Load()}
}

func (l *Loader[T]) lookup(id string) (T, bool) {
	l.cfg.ItemsMu.RLock()
	defer l.cfg.ItemsMu.RUnlock()
	v, ok := l.cfg.Items[id]
	return v, ok
}

// Get returns id's item, loading it unless it is in memory; a load in
// flight for id is waited for, not repeated. Errors: Load's, or ctx's.
func (l *Loader[T]) Get(ctx context.Context, id string) (T, error) {
	if v, ok := l.lookup(id); ok {
		return v, nil
	}
	l.mu.Lock()
	// Again under mu: a load that finished since put the item in memory
	// before it left calls.
	if v, ok := l.lookup(id); ok {
		l.mu.Unlock()
		return v, nil
	}
	c, waiting := l.calls[id]
	if !waiting {
		c = &call[T]{done: make(chan struct{})}
		l.calls[id] = c
	}
	l.mu.Unlock()
	if waiting {
		l.shared.Add(1)
		select {
		case <-c.done:
			return c.v, c.err
		case <-ctx.Done():
			var zero T
			return zero, ctx.Err()
		}
	}
	// A Load that panics (the panic goes on up to the caller's recovery)
	// must not leave the others waiting for ever.
	finished := false
	defer func() {
		if !finished {
			c.err = errLoadPanicked
			l.finish(id, c)
		}
	}()
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), loadTimeout)
	stop := context.AfterFunc(l.cfg.Context, cancel) // the owner's shutdown still ends it
	c.v, c.err = l.cfg.Load(lctx, id)
	stop()
	cancel()
	if c.err == nil {
		if err := l.cfg.Check(c.v); err != nil {
			l.cfg.Logger.ErrorContext(ctx, "credential loaded but neither served nor refreshed until it is updated", "credential", id, "err", err)
		}
	}
	finished = true
	l.finish(id, c)
	return c.v, c.err
}

// errLoadPanicked is what the callers sharing a load that panicked get.
var errLoadPanicked = errors.New("bgload: the load panicked")

func (l *Loader[T]) finish(id string, c *call[T]) {
	l.mu.Lock()
	delete(l.calls, id)
	l.mu.Unlock()
	close(c.done)
}

// Run lists the items and loads them, until every one is loaded or ctx
// ends. A listing or a load that fails is retried with backoff, never
// dropped.
func (l *Loader[T]) Run(ctx context.Context) {
	var ids []string
	if err := l.retry(ctx, "", func() (err error) {
		ids, err = l.cfg.Store.List(ctx, l.cfg.Prefix)
		return err
	}); err != nil {
		close(l.stopped)
		return
	}
	for i, k := range ids {
		ids[i] = strings.TrimPrefix(k, l.cfg.Prefix)
	}
	l.toLoad.Store(int64(len(ids)))
	l.listed.Store(true)
	feed := make(chan string)
	var wg sync.WaitGroup
	for range min(l.cfg.Workers, len(ids)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range feed {
				if l.retry(ctx, id, func() error {
					_, err := l.Get(ctx, id)
					if errors.Is(err, brokererr.ErrNotFound) {
						return nil
					}
					return err
				}) != nil {
					return
				}
				l.loaded.Add(1)
			}
		}()
	}
send:
	for _, id := range ids {
		select {
		case feed <- id:
		case <-ctx.Done():
			break send
		}
	}
	close(feed)
	wg.Wait()
	if ctx.Err() != nil {
		close(l.stopped)
		return
	}
	close(l.done)
	l.cfg.Logger.Info("all credentials loaded", "credentials", len(ids), "took", time.Since(l.start).Round(time.Millisecond),
		"workers", l.cfg.Workers, "load_failures", l.failures.Load())
}

// retry runs load until it succeeds, waiting Backoff after each failure; it
// fails only when ctx ends.
func (l *Loader[T]) retry(ctx context.Context, id string, load func() error) error {
	for attempt := 0; ; attempt++ {
		err := load()
		if err == nil {
			if attempt > 0 && l.warned.CompareAndSwap(true, false) {
				l.cfg.Logger.Info("loading credentials again after failures", "credential", id, "attempts", attempt+1)
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		l.failures.Add(1)
		if l.warned.CompareAndSwap(false, true) {
			l.cfg.Logger.Warn("loading credentials failed; retrying each with backoff (rotavault_credential_load_failures_total counts the tries)",
				"credential", id, "err", err)
		}
		t := time.NewTimer(min(l.cfg.RetryBase<<min(attempt, 16), maxBackoff))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}
