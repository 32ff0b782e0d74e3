package main

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/store"
)

func TestStatusShowsAServerAtAGlance(t *testing.T) {
	dir := t.TempDir()
	keyFile, _ := newKeyFile(t, t.TempDir(), "store.key")
	c := newCLI(t, nil)
	node := startNode(t, dir, keyFile, c.trans)
	c.env = map[string]string{"ROTAVAULT_ADDR": node.addr}
	for _, id := range []string{"a", "b"} {
		c.run("", "credentials", "put", id, "--provider", "oauth2", "--token-url", "https://idp.example.com/token", "--client-id", "x").expect(t, exitOK)
	}

	r := c.run("", "status").expect(t, exitOK)
	for _, want := range []string{"Server", node.addr, "Version", "Store", "embedded", "Ready", "true",
		"Credentials awaiting_reauthentication  2", "Credentials active", "Credentials revoked"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, r.stdout)
		}
	}

	r = c.run("", "status", "--json").expect(t, exitOK)
	var st struct {
		Version          string `json:"version"`
		StoreBackend     string `json:"storeBackend"`
		Ready            bool   `json:"ready"`
		CredentialCounts []struct {
			Status string `json:"status"`
			Count  string `json:"count"`
		} `json:"credentialCounts"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	counts := map[string]string{}
	for _, c := range st.CredentialCounts {
		counts[c.Status] = c.Count
	}
	if st.Version == "" || st.StoreBackend != "embedded" || !st.Ready || counts["CREDENTIAL_STATUS_AWAITING_REAUTHENTICATION"] != "2" || len(counts) != 4 {
		t.Fatalf("status --json: %+v", st)
	}

	// Nothing listens: unreachable is worth a retry.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := lis.Addr().String()
	_ = lis.Close()
	r = c.runEnv(map[string]string{"ROTAVAULT_ADDR": gone}, "", "status", "--timeout", "2s").expect(t, exitUnavailable)
	if r = c.runEnv(map[string]string{"ROTAVAULT_ADDR": gone}, "", "status", "--json", "--timeout", "2s").expect(t, exitUnavailable); !strings.Contains(r.stderr, "{") {
		t.Errorf("status --json of an unreachable server: stderr %q, want a JSON error", r.stderr)
	}
}

// downStore fails every read while down is set: an embedded store whose
// disk stopped answering, as the server sees it.
type downStore struct {
	store.Store
	down atomic.Bool
}

var errDiskGone = errors.New("injected: the store's disk stopped answering")

func (s *downStore) Get(ctx context.Context, key string) (store.Record, error) {
	if s.down.Load() {
		return store.Record{}, errDiskGone
	}
	return s.Store.Get(ctx, key)
}

func (s *downStore) List(ctx context.Context, prefix string) ([]string, error) {
	if s.down.Load() {
		return nil, errDiskGone
	}
	return s.Store.List(ctx, prefix)
}

func (s *downStore) ListPage(ctx context.Context, prefix, after string, limit int) ([]string, bool, error) {
	if s.down.Load() {
		return nil, false, errDiskGone
	}
	return s.Store.ListPage(ctx, prefix, after, limit)
}

// A server on the embedded store that cannot read it is not ready: status
// says why and exits 5 (worth a retry), with --json too, and /readyz
// answers 503 (what the Helm chart's readiness probe asks); once the store
// answers again, status exits 0 and /readyz 200.
func TestStatusOfANotReadyServerExitsUnavailable(t *testing.T) {
	keyFile, _ := newKeyFile(t, t.TempDir(), "store.key")
	c := newCLI(t, nil)
	ds := &downStore{}
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	readyz := "http://" + httpLis.Addr().String() + "/readyz"
	readyzStatus := func() int {
		resp, err := http.Get(readyz)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	node := startNode(t, t.TempDir(), keyFile, c.trans, func(cfg *serverConfig) {
		cfg.wrapStore = func(st store.Store) store.Store { ds.Store = st; return ds }
		cfg.HTTPListener = httpLis
	})
	c.env = map[string]string{"ROTAVAULT_ADDR": node.addr}
	c.run("", "status").expect(t, exitOK)

	ds.down.Store(true)
	r := c.run("", "status").expect(t, exitUnavailable)
	for _, want := range []string{"embedded", "Ready", "false", "Not ready because", "store is unavailable"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status of a server that cannot read its store lacks %q:\n%s", want, r.stdout)
		}
	}
	if !strings.Contains(r.stderr, "not ready") {
		t.Errorf("stderr does not say the server is not ready: %q", r.stderr)
	}
	r = c.run("", "status", "--json").expect(t, exitUnavailable)
	var st struct {
		StoreBackend string `json:"storeBackend"`
		Ready        bool   `json:"ready"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || st.Ready || st.StoreBackend != "embedded" {
		t.Errorf("status --json: %+v (%v)\n%s", st, err, r.stdout)
	}
	if !strings.HasPrefix(strings.TrimSpace(r.stderr), "{") {
		t.Errorf("status --json of a not-ready server: stderr %q, want a JSON error", r.stderr)
	}
	// Readiness follows the notice log's last read: unready once it is
	// more than 5 s old.
	poll.Until(t, awaitDeadline, "/readyz answering 503 while the store is down", func() bool { return readyzStatus() == http.StatusServiceUnavailable })

	ds.down.Store(false)
	poll.Until(t, awaitDeadline, "/readyz answering 200 once the store is back", func() bool { return readyzStatus() == http.StatusOK })
	c.run("", "status").expect(t, exitOK)
}
