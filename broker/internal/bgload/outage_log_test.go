package bgload

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/internal/syncbuf"
	"github.com/rotavault/rotavault/store/memstore"
)

const (
	failedLine    = "loading credentials failed"
	recoveredLine = "loading credentials again after failures"
)

var errStoreDown = errors.New("test: the store is down")

// docs/operations.md says of rotavault_credential_load_failures_total that
// the failed loads are "logged once per outage": a store down while
// several loads fail, each several times, makes one warning, and its
// recovery one line; a second outage after the recovery makes one more of
// each. The store goes down again from inside the load that ends the first
// outage, so the second outage starts at a known point.
func TestLoadFailuresAreLoggedOncePerOutage(t *testing.T) {
	ctx := t.Context()
	ids := []string{"a", "b", "c"}
	st := storeOf(t, ids)
	var (
		logs  syncbuf.Buffer
		down  atomic.Bool
		mu    sync.RWMutex
		items = make(map[string]string)
	)
	down.Store(true)
	l := New(Config[string]{
		Store: st, Prefix: "creds/", Context: ctx, Items: items, ItemsMu: &mu,
		Load: func(_ context.Context, id string) (string, error) {
			if down.Load() {
				return "", errStoreDown
			}
			mu.Lock()
			items[id] = id
			mu.Unlock()
			if id == "a" {
				down.Store(true) // the second outage
			}
			return id, nil
		},
		Check:   func(string) error { return nil },
		Workers: 1, RetryBase: time.Millisecond,
		Logger: slog.New(slog.NewJSONHandler(&logs, nil)),
	})
	runInBackground(t, l)

	lines := func(msg string) int { return strings.Count(logs.String(), msg) }
	failedAtLeast := func(what string, n int64) {
		t.Helper()
		poll.Until(t, 10*time.Second, what, func() bool { return l.Stats().Failures >= n })
	}
	want := func(when string, failed, recovered int) {
		t.Helper()
		if f, r := lines(failedLine), lines(recoveredLine); f != failed || r != recovered {
			t.Errorf("%s (%d failed loads): %d warnings and %d recovery lines, want %d and %d; log:\n%s",
				when, l.Stats().Failures, f, r, failed, recovered, logs.String())
		}
	}

	failedAtLeast("five failed loads in the first outage", 5)
	want("during the first outage", 1, 0)

	first := l.Stats().Failures
	down.Store(false) // a loads, and the store goes down again
	failedAtLeast("five failed loads in the second outage", first+5)
	want("during the second outage", 2, 1)

	down.Store(false)
	if err := l.Await(ctx); err != nil {
		t.Fatal(err)
	}
	want("after both outages", 2, 2)
	if s := l.Stats(); s.Loaded != int64(len(ids)) {
		t.Errorf("loaded %d of %d credentials", s.Loaded, len(ids))
	}
}

// Loads failing side by side in one outage, each several times, make one
// warning between them, not one per credential.
func TestLoadsFailingTogetherAreLoggedOnce(t *testing.T) {
	ctx := t.Context()
	ids := []string{"a", "b", "c", "d"}
	st := storeOf(t, ids)
	var (
		logs   syncbuf.Buffer
		mu     sync.RWMutex
		failed sync.Map // ids whose load failed at least twice
		tries  [4]atomic.Int64
	)
	l := New(Config[string]{
		Store: st, Prefix: "creds/", Context: ctx, Items: make(map[string]string), ItemsMu: &mu,
		Load: func(_ context.Context, id string) (string, error) {
			if tries[id[0]-'a'].Add(1) >= 2 {
				failed.Store(id, true)
			}
			return "", errStoreDown
		},
		Check:   func(string) error { return nil },
		Workers: len(ids), RetryBase: time.Millisecond,
		Logger: slog.New(slog.NewJSONHandler(&logs, nil)),
	})
	runInBackground(t, l)
	poll.Until(t, 10*time.Second, "every credential's load failed twice", func() bool {
		n := 0
		failed.Range(func(any, any) bool { n++; return true })
		return n == len(ids)
	})
	if n := strings.Count(logs.String(), failedLine); n != 1 {
		t.Errorf("%d failed loads of %d credentials logged %d warnings, want 1:\n%s", l.Stats().Failures, len(ids), n, logs.String())
	}
}

// runInBackground runs l until the test ends, and waits for it to return.
func runInBackground(t *testing.T, l *Loader[string]) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Run(t.Context())
	}()
	t.Cleanup(func() { <-done }) // t.Context ends before cleanups run
}

// storeOf is a store holding a credential record for each of ids.
func storeOf(t *testing.T, ids []string) *memstore.Store {
	t.Helper()
	st := memstore.New()
	for _, id := range ids {
		if _, err := st.Put(t.Context(), "creds/"+id, []byte(id), 0); err != nil {
			t.Fatal(err)
		}
	}
	return st
}
