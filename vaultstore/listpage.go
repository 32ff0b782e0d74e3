package vaultstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rotavault/rotavault/store"
)

// DefaultListRefresh is Config.ListRefresh's default.
const DefaultListRefresh = 5 * time.Second

// DefaultHintedListRefresh is Config.HintedListRefresh's default.
const DefaultHintedListRefresh = 5 * time.Minute

// Paging on Vault. A KV v2 LIST cannot page: it returns every key of a
// folder (OpenBao added pagination, Vault did not). Listing the whole folder
// for each page made a full listing of n keys cost n²/page keys read and
// sent. Instead the store keeps, per folder it was asked to page, the
// folder's sorted keys in memory: built by one LIST, kept current by this
// store's own writes (a creation adds its key, a deletion removes it), and
// listed again when older than its refresh period. A page is then a binary
// search and a copy of limit keys.
//
// Other processes' creations and deletions reach a listing in one of two
// ways. In a hinted folder (see ListingHints: the broker tells the store of
// every credential another replica creates or deletes, from the notice log
// every replica follows) they arrive as hints and are applied like this
// store's own writes, so a page never waits for a LIST once the folder has
// a listing: a LIST is only a safety net for changes whose hint was lost (a
// replica that died between its write and its notice), started in the
// background every HintedListRefresh while the folder is paged. In any
// other folder only a LIST shows them, so a page waits for one when the
// listing is older than ListRefresh, which is then the bound on how late
// they show.
//
// A LIST starts when a page finds the folder's listing missing, or older
// than its refresh period in a folder without hints (the page waits for
// it), or, in the background, when a page finds it older than half of that:
// a listing read page after page never waits again, and a folder nobody
// pages costs Vault nothing. The refresh period is ListRefresh (or
// HintedListRefresh), or listLoadFactor times the folder's last LIST when
// that is longer: a LIST of 100,000 keys takes seconds, and back-to-back
// LISTs would keep Vault busy for as long as anyone pages. A hinted folder's
// first listing comes from the first List of it (the broker's background
// load lists the credentials at start), so that LIST is not sent twice.
const listLoadFactor = 10

// errClosed: ListPage after Close.
var errClosed = errors.New("vaultstore: store closed")

// listings are the folders' listings of one Store. Safe for concurrent use.
type listings struct {
	// refresh is the refresh period of a folder without hints, hinted of
	// one with.
	refresh, hinted time.Duration
	now             func() time.Time
	// run starts a LIST of prefix in a goroutine the Store owns; false once
	// the store is closed.
	run func(prefix string, done func(keys []string, err error)) bool

	mu       sync.Mutex
	byPrefix map[string]*listing
	// hintedFolders are the folders whose other processes' changes come as
	// hints (ListingHints).
	hintedFolders map[string]bool
}

// listing is one folder's keys. Guarded by listings.mu.
type listing struct {
	keys []string // sorted
	// listedAt is when the LIST that keys come from began; zero before the
	// first one succeeded.
	listedAt time.Time
	// running is closed when the LIST in flight ends; nil when none runs.
	running chan struct{}
	// pending are this store's writes since the running LIST began: the
	// LIST may or may not have seen them, so they are applied again to its
	// answer.
	pending []change
	// err is the last LIST's failure, for the pages that waited for it.
	err error
	// took is how long the last successful LIST took.
	took time.Duration
}

// period is how long l serves before Vault is listed again.
func (l *listing) period(refresh time.Duration) time.Duration {
	return max(refresh, listLoadFactor*l.took)
}

type change struct {
	key     string
	present bool
}

// page answers ListPage.
func (ls *listings) page(ctx context.Context, prefix, after string, limit int) ([]string, bool, error) {
	waited := false
	for {
		ls.mu.Lock()
		l := ls.byPrefix[prefix]
		if l == nil {
			l = &listing{}
			ls.byPrefix[prefix] = l
		}
		if waited && l.err != nil {
			err := l.err
			ls.mu.Unlock()
			return nil, false, err
		}
		hinted := ls.hintedFolders[prefix]
		age, period := ls.now().Sub(l.listedAt), l.period(ls.refreshOf(hinted))
		// A page that waited for a LIST takes its answer even when the LIST
		// took longer than the refresh period: it saw every change made
		// before it began, and this page waited for it. A hinted folder's
		// listing is current whatever its age.
		if !l.listedAt.IsZero() && (age < period || waited || hinted) {
			keys, more := store.PageOf(l.keys, after, limit)
			if age >= period/2 && l.running == nil && !waited {
				ls.start(prefix, l) // in the background; a failure is retried by a later page
			}
			ls.mu.Unlock()
			return keys, more, nil
		}
		running := l.running
		if running == nil {
			if running = ls.start(prefix, l); running == nil {
				ls.mu.Unlock()
				return nil, false, errClosed
			}
		}
		ls.mu.Unlock()
		select {
		case <-running:
			waited = true
		case <-ctx.Done():
			return nil, false, fmt.Errorf("vaultstore: list page %s: %w", prefix, ctx.Err())
		}
	}
}

func (ls *listings) refreshOf(hinted bool) time.Duration {
	if hinted {
		return ls.hinted
	}
	return ls.refresh
}

// first answers List for a hinted folder that has no listing yet and no
// LIST running: it starts the folder's first LIST and waits for it, so
// that the LIST the caller asked for becomes the listing; ok is false for
// any other folder, which the caller lists itself.
func (ls *listings) first(ctx context.Context, prefix string) (keys []string, ok bool, err error) {
	ls.mu.Lock()
	l := ls.byPrefix[prefix]
	if !ls.hintedFolders[prefix] || (l != nil && (!l.listedAt.IsZero() || l.running != nil)) {
		ls.mu.Unlock()
		return nil, false, nil
	}
	if l == nil {
		l = &listing{}
		ls.byPrefix[prefix] = l
	}
	running := ls.start(prefix, l)
	ls.mu.Unlock()
	if running == nil {
		return nil, true, errClosed
	}
	select {
	case <-running:
	case <-ctx.Done():
		return nil, true, fmt.Errorf("vaultstore: list %s: %w", prefix, ctx.Err())
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if l.listedAt.IsZero() {
		return nil, true, l.err
	}
	return slices.Clone(l.keys), true, nil
}

// hints makes prefix a hinted folder and returns its hint function.
func (ls *listings) hints(prefix string) func(key string, present bool) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	ls.hintedFolders[prefix] = true
	return func(key string, present bool) {
		if dir, name, ok := cutFolder(key); ok && dir == prefix && name != "" {
			ls.note(key, present)
		}
	}
}

// start begins a LIST of l's folder; nil when the store is closed. Called
// with ls.mu held.
func (ls *listings) start(prefix string, l *listing) chan struct{} {
	running := make(chan struct{})
	began := ls.now()
	ok := ls.run(prefix, func(keys []string, err error) {
		ls.mu.Lock()
		defer ls.mu.Unlock()
		if err == nil {
			for _, c := range l.pending {
				keys = applyChange(keys, c)
			}
			l.keys, l.listedAt, l.took = keys, began, ls.now().Sub(began)
		}
		l.err, l.pending, l.running = err, nil, nil
		close(running)
	})
	if !ok {
		return nil
	}
	l.running, l.pending = running, nil
	return running
}

// cutFolder splits key into its folder (ending in "/") and its name.
func cutFolder(key string) (dir, name string, ok bool) {
	i := strings.LastIndexByte(key, '/')
	if i < 0 {
		return "", "", false
	}
	return key[:i+1], key[i+1:], true
}

// note applies a write of key (present: created or updated; not: deleted),
// this store's or one hinted, to its folder's listing, if that folder is
// being paged.
func (ls *listings) note(key string, present bool) {
	dir, _, ok := cutFolder(key)
	if !ok {
		return
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l := ls.byPrefix[dir]
	if l == nil {
		return
	}
	c := change{key: key, present: present}
	if !l.listedAt.IsZero() {
		l.keys = applyChange(l.keys, c)
	}
	if l.running != nil {
		l.pending = append(l.pending, c)
	}
}

func applyChange(keys []string, c change) []string {
	i, found := slices.BinarySearch(keys, c.key)
	switch {
	case c.present && !found:
		return slices.Insert(keys, i, c.key)
	case !c.present && found:
		return slices.Delete(keys, i, i+1)
	}
	return keys
}

// ListPage implements store.Store from the folder's listing kept in memory
// (see listings): this store's own writes show at once, other processes'
// creations and deletions once hinted (ListingHints), else within the
// refresh period (Config.ListRefresh) or once a LIST that began after
// them ends. Errors: store.ErrInvalidKey,
// store.ErrInvalidLimit, ctx.Err() wrapped, or the LIST's failure.
func (s *Store) ListPage(ctx context.Context, prefix, after string, limit int) ([]string, bool, error) {
	if err := store.ValidatePage(prefix, limit); err != nil {
		return nil, false, fmt.Errorf("vaultstore: list page: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, false, fmt.Errorf("vaultstore: list page %s: %w", prefix, err)
	}
	return s.lists.page(ctx, prefix, after, limit)
}

// runList is listings.run: the LIST runs under the store's lifetime, not
// the asking page's context, since other pages may wait for it.
func (s *Store) runList(prefix string, done func([]string, error)) bool {
	s.listMu.Lock()
	defer s.listMu.Unlock()
	if s.listClosed {
		return false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(s.life, listTimeout)
		defer cancel()
		keys, err := s.list(ctx, prefix)
		done(keys, err)
	}()
	return true
}

// ListingHints implements store.Store: prefix becomes a hinted folder,
// whose pages never wait for a LIST once it has a listing (see listings).
// Hints of keys not directly under prefix are ignored.
func (s *Store) ListingHints(prefix string) func(key string, present bool) {
	return s.lists.hints(prefix)
}

// listTimeout bounds one LIST of a folder's keys.
const listTimeout = time.Minute
