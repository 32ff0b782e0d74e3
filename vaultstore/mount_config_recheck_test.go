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
	srv := vaulttest.StartDev(t)
	root := srv.RootClient(t)
	client, counter := srv.CountingClient(t)
	clock := fakeclock.New(time.Now())
	var logs syncbuf.Buffer
	s := newStore(t, vaultstore.Config{Client: client, Now: clock.Now, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
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
	if !strings.Contains(logs.String(), "records created while it did") {
		t.Fatalf("the loosening was logged without the records it exposes:\n%s", logs.String())
	}
}
