package vaultstore_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	vault "github.com/hashicorp/vault/api"

	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/vaultstore"
)

// A check-and-set write whose answer is lost after Vault applied it is
// sent again by vault/api's retries (VAULT_MAX_RETRIES, 2 by default); the
// resent write then finds its own version and Vault refuses it as a
// check-and-set mismatch. The store must report the write as done, with
// its version — not as a conflict with another writer, which would make
// the broker believe a claim or a rotation's result was not stored.
func TestPutWhoseAnswerWasLostIsNotAConflict(t *testing.T) {
	srv := vaulttest.StartDev(t)
	target, err := url.Parse(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	var dropNext atomic.Bool
	var dropped atomic.Int32
	forward := httputil.NewSingleHostReverseProxy(target)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPut && r.Method != http.MethodPost || !strings.Contains(r.URL.Path, "/data/") || !dropNext.CompareAndSwap(true, false) {
			forward.ServeHTTP(w, r)
			return
		}
		// Let Vault apply the write, then lose its answer.
		rec := httptest.NewRecorder()
		forward.ServeHTTP(rec, r)
		_, _ = io.Copy(io.Discard, rec.Result().Body)
		dropped.Add(1)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			_ = conn.Close()
		}
	}))
	t.Cleanup(proxy.Close)

	cfg := vaultstore.ClientConfig()
	cfg.Address = proxy.URL
	cfg.MaxRetries = 2
	c, err := vault.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(srv.RootToken)
	s := newStore(t, vaultstore.Config{Client: c})
	ctx := context.Background()

	v1, err := s.Put(ctx, "families/lost-answer", []byte("generation 1"), 0)
	if err != nil {
		t.Fatal(err)
	}
	dropNext.Store(true)
	v2, err := s.Put(ctx, "families/lost-answer", []byte("generation 2"), v1)
	if dropped.Load() != 1 {
		t.Fatalf("the proxy dropped %d answers, want 1 (test setup)", dropped.Load())
	}
	if err != nil {
		t.Fatalf("put whose answer was lost and resent: %v, want success", err)
	}
	rec, err := s.Get(ctx, "families/lost-answer")
	if err != nil {
		t.Fatal(err)
	}
	if v2 != v1+1 || rec.Version != v2 || string(rec.Value) != "generation 2" {
		t.Fatalf("put returned version %d; stored version %d %q; want %d, \"generation 2\"", v2, rec.Version, rec.Value, v1+1)
	}

	// Another writer's version stays a conflict.
	if _, err := s.Put(ctx, "families/lost-answer", []byte("generation 3"), v2); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "families/lost-answer", []byte("late writer"), v2); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("put at a superseded version: %v, want ErrConflict", err)
	}
}
