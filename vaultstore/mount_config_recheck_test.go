package vaultstore_test

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/syncbuf"
	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/vaultstore"
)

// cancelOnConfigRead calls cancel, when set, as a request for the mount's
// configuration leaves: the caller whose creation made the store read it
// again gives up meanwhile (a client's deadline).
type cancelOnConfigRead struct {
	next   http.RoundTripper
	cancel atomic.Pointer[context.CancelFunc]
}

func (c *cancelOnConfigRead) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasSuffix(r.URL.Path, "/config") {
		if cancel := c.cancel.Swap(nil); cancel != nil {
			(*cancel)()
		}
	}
	return c.next.RoundTrip(r)
}

// A caller giving up while its creation reads the mount's configuration
// again learns nothing about the mount: the store keeps what it knew, so
// the creations after it stay one Vault write on a mount that requires
// check-and-set, and nothing is logged as unreadable.
func TestCallerGivingUpDuringTheMountRecheckChangesNothing(t *testing.T) {
	srv := vaulttest.StartDev(t)
	root := srv.RootClient(t)
	base, counter := srv.CountingClient(t)
	cfg := base.CloneConfig()
	hc := *cfg.HttpClient
	hook := &cancelOnConfigRead{next: hc.Transport}
	hc.Transport = hook
	cfg.HttpClient = &hc
	client, err := vault.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	client.SetToken(base.Token())
	clock := fakeclock.New(time.Now())
	var logs syncbuf.Buffer
	s := newStore(t, vaultstore.Config{Client: client, Now: clock.Now, Logger: slog.New(slog.NewTextHandler(&logs, nil))})

	clock.Add(time.Minute)
	ctx, cancel := context.WithCancel(t.Context())
	hook.cancel.Store(&cancel)
	if _, err := s.Put(ctx, "families/abandoned", []byte("v1"), 0); err == nil {
		t.Fatal("a creation whose caller gave up succeeded")
	}
	if writes, keyCAS := createCost(t, s, counter, root, "families/next"); writes != 1 || keyCAS {
		t.Fatalf("creation after a caller gave up during the recheck: %d Vault writes (own cas_required %v), want 1 and no metadata", writes, keyCAS)
	}
	if strings.Contains(logs.String(), "not readable") {
		t.Fatalf("a caller giving up was logged as an unreadable configuration:\n%s", logs.String())
	}
}

// Records created while the mount requires check-and-set have no metadata
// of their own: loosening the mount later leaves them accepting writes
// without check-and-set. The store says so when it sees the change.
func TestLooseningTheMountIsLoggedWithTheRecordsItExposes(t *testing.T) {
	m := startMountRecheck(t)
	s, root, counter, clock := m.store, m.root, m.counter, m.clock
	if writes, _ := createCost(t, s, counter, root, "families/early"); writes != 1 {
		t.Fatalf("creation on a mount requiring check-and-set: %d writes, want 1", writes)
	}
	if _, err := root.Logical().Write("secret/config", map[string]any{"cas_required": false}); err != nil {
		t.Fatal(err)
	}
	clock.Add(time.Minute)
	createCost(t, s, counter, root, "families/late")
	if _, err := root.KVv2("secret").Put(t.Context(), "rotavault/families/early", map[string]any{"value": "eA=="}); err != nil {
		t.Fatalf("a record created under the stricter mount refused a write without check-and-set (%v): README says it no longer does", err)
	}
	if !strings.Contains(m.logs.String(), "records created while it did") {
		t.Fatalf("the loosening was logged without the records it exposes:\n%s", m.logs.String())
	}
}

// Start-up refuses a mount that deletes versions after a time; one set so
// later is reported at the next reading of the mount's configuration.
func TestMountDeletingVersionsLaterIsReported(t *testing.T) {
	m := startMountRecheck(t)
	s, root, counter, clock := m.store, m.root, m.counter, m.clock
	if _, err := root.Logical().Write("secret/config", map[string]any{"delete_version_after": "720h"}); err != nil {
		t.Fatal(err)
	}
	clock.Add(time.Minute)
	createCost(t, s, counter, root, "families/one")
	if !strings.Contains(m.logs.String(), "now deletes versions after a time") {
		t.Fatalf("delete_version_after set after start-up was not reported:\n%s", m.logs.String())
	}
}

// mountRecheck is a store on a dev server whose mount requires
// check-and-set, on a clock of the test's, with its logs and Vault requests.
type mountRecheck struct {
	store   *vaultstore.Store
	root    *vault.Client
	counter *vaulttest.Requests
	clock   *fakeclock.Clock
	logs    *syncbuf.Buffer
}

func startMountRecheck(t *testing.T) mountRecheck {
	t.Helper()
	srv := vaulttest.StartDev(t)
	client, counter := srv.CountingClient(t)
	m := mountRecheck{root: srv.RootClient(t), counter: counter, clock: fakeclock.New(time.Now()), logs: &syncbuf.Buffer{}}
	m.store = newStore(t, vaultstore.Config{Client: client, Now: m.clock.Now, Logger: slog.New(slog.NewTextHandler(m.logs, nil))})
	return m
}
