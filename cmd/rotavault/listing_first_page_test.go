package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/boltstore"
	"github.com/rotavault/rotavault/internal/syncbuf"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/storetest"
)

// listedPages counts the pages of credentials a server asked its store for
// at the CLI's page size, and its full listings of the credentials.
type listedPages struct {
	store.Store
	n, full atomic.Int64
}

func (s *listedPages) List(ctx context.Context, prefix string) ([]string, error) {
	if prefix == "credentials/" {
		s.full.Add(1)
	}
	return s.Store.List(ctx, prefix)
}

func (s *listedPages) ListPage(ctx context.Context, prefix, after string, limit int) ([]string, bool, error) {
	if prefix == "credentials/" && limit == listPageSize {
		s.n.Add(1)
	}
	return s.Store.ListPage(ctx, prefix, after, limit)
}

// firstWrite is stdout remembering when it was first written to and how
// many pages the server had been asked for by then.
type firstWrite struct {
	syncbuf.Buffer
	pages *listedPages
	once  sync.Once
	at    time.Time
	asked int64
}

func (w *firstWrite) Write(p []byte) (int, error) {
	w.once.Do(func() { w.at, w.asked = time.Now(), w.pages.n.Load() })
	return w.Buffer.Write(p)
}

// `credentials list` over 100,000 credentials (on the embedded store) shows
// its first page before it asks for the last: the server answers a page
// for the cost of a page, and the command prints each page as it arrives.
// The server reads no full listing of the credentials for it. The time to
// the first line is logged, not asserted.
func TestCredentialsListOf100000PrintsBeforeAskingForTheLastPage(t *testing.T) {
	const n = 100_000
	dir := t.TempDir()
	keyFile, key := newKeyFile(t, t.TempDir(), "store.key")
	c := newCLI(t, nil)
	node := startNode(t, dir, keyFile, c.trans)
	c.env = map[string]string{"ROTAVAULT_ADDR": node.addr}
	c.run("", "credentials", "put", "template", "--provider", "oauth2", "--token-url", "https://idp.example.com/token", "--client-id", "x").expect(t, exitOK)
	node.stop(t)
	seedCopies(t, filepath.Join(dir, storeFileName), key, "template", n)

	pages := &listedPages{}
	node = startNode(t, dir, keyFile, c.trans, func(cfg *serverConfig) {
		cfg.wrapStore = func(st store.Store) store.Store { pages.Store = st; return pages }
	})
	c.env["ROTAVAULT_ADDR"] = node.addr
	loads := pages.full.Load() // the server's start loads every credential
	out, errOut := &firstWrite{pages: pages}, &syncbuf.Buffer{}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	code := execute(ctx, newRootCmd(strings.NewReader(""), out, errOut, c.envFunc(nil)), []string{"credentials", "list"}, errOut)
	took := time.Since(start)
	if code != exitOK {
		t.Fatalf("credentials list: exit %d: %s", code, errOut.String())
	}
	total := pages.n.Load()
	t.Logf("%d credentials: first line after %s, with %d of %d pages asked for; all printed after %s",
		n+1, out.at.Sub(start).Round(time.Millisecond), out.asked, total, took.Round(time.Millisecond))
	if want := int64((n + 1 + listPageSize - 1) / listPageSize); total != want {
		t.Fatalf("%d pages asked for, want %d", total, want)
	}
	if full := pages.full.Load() - loads; full != 0 {
		t.Errorf("the listing read every credential's key %d times; each page should read its own", full)
	}
	if out.asked != 1 {
		t.Errorf("the first line was printed when %d pages had been asked for, want 1", out.asked)
	}
	if lines := strings.Count(out.String(), "\n"); lines != n+2 {
		t.Errorf("%d lines printed, want a header and %d credentials", lines, n+1)
	}
}

// seedCopies writes n copies of credential id's record (ids copy-0000000…)
// straight into the embedded store at path (storetest.Seed): the API would
// take minutes.
func seedCopies(t *testing.T, path string, key boltstore.Key, id string, n int) {
	t.Helper()
	st, err := boltstore.Open(path, key, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	ctx := t.Context()
	rec, err := st.Get(ctx, "credentials/"+id)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(rec.Value, &fields); err != nil {
		t.Fatal(err)
	}
	err = storetest.Seed(ctx, st, n, func(i int) ([]store.Record, error) {
		record := maps.Clone(fields)
		copyID := fmt.Sprintf("copy-%07d", i)
		record["id"], record["incarnation"] = copyID, fmt.Sprintf("inc%d", i)
		raw, err := json.Marshal(record)
		return []store.Record{{Key: "credentials/" + copyID, Value: raw}}, err
	})
	if err != nil {
		t.Fatal(err)
	}
}
