package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/catalog"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/internal/lease"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/syncbuf"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/memstore"
)

// catalogSpec is a credential the catalog tests never refresh.
func catalogSpec() credspec.Spec {
	return credspec.Spec{ProviderKind: credspec.ProviderSalesforce, BaseURL: "http://127.0.0.1:1", ClientID: "c", ClientSecret: "s", Scopes: []string{"api", "refresh_token"}}
}

func use(cred, identity string, first, last time.Time, n uint64) catalog.Use {
	return catalog.Use{CredentialID: cred, Identity: identity, FirstSeen: first, LastSeen: last, Count: n}
}

// record stores uses the way the server's flush does: what comes back
// unrecorded is offered again, a bounded number of times; then the inboxes
// of every shard are merged (these replicas share their store), as
// FlushIssuance does.
func record(ctx context.Context, t *testing.T, b *Broker, uses []catalog.Use) {
	t.Helper()
	for range 100 {
		left, err := b.Catalog().Record(ctx, uses)
		if len(left) == 0 {
			if err != nil {
				t.Fatalf("RecordConsumers: %v", err)
			}
			mergeAll(ctx, t, b)
			return
		}
		uses = left
	}
	t.Fatalf("uses still unrecorded after 100 flushes: %v", uses)
}

// mergeAll merges the inboxes of every shard into the catalog, retrying
// what failed a bounded number of times.
func mergeAll(ctx context.Context, t *testing.T, b *Broker) {
	t.Helper()
	var err error
	for range 100 {
		if err = b.Catalog().MergeInboxes(ctx, time.Minute, time.Now(), true); err == nil {
			return
		}
	}
	t.Fatalf("MergeInboxes: %v", err)
}

func listAll(ctx context.Context, t *testing.T, b *Broker, credentialID string) map[string]catalog.Consumer {
	t.Helper()
	got, more, err := b.Catalog().List(ctx, credentialID, catalog.Cursor{}, 1000)
	if err != nil || more {
		t.Fatalf("ListConsumers(%q) = more %v, %v", credentialID, more, err)
	}
	m := make(map[string]catalog.Consumer, len(got))
	for _, c := range got {
		m[c.CredentialID+" "+c.Identity] = c
	}
	return m
}

// Two replicas flush into one catalog. Replica B's flush lands between
// replica A's read and A's check-and-set write, so A's write conflicts: A
// must re-read and merge (counts added, earliest first seen, latest last
// seen), not overwrite B's.
func TestConsumerCatalogMergesFlushesOfTwoReplicas(t *testing.T) {
	ctx := context.Background()
	st := &faultStore{Store: memstore.New(), conflictPrefix: catalog.KeyPrefix}
	a, b := newTestBroker(t, st), newTestBroker(t, st)
	if _, err := a.Credentials().Create(ctx, "acme", catalogSpec()); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	const billing, reports, exporter = "spiffe://example.test/ns/billing/sa/invoicer", "reports.example.test", "exporter"

	st.inject(&fault{op: "put", prefix: catalog.KeyPrefix, once: true, before: func() {
		record(ctx, t, b, []catalog.Use{use("acme", billing, at(5), at(12), 5), use("acme", exporter, at(30), at(31), 2)})
	}})
	record(ctx, t, a, []catalog.Use{use("acme", billing, at(10), at(20), 3), use("acme", reports, at(15), at(15), 1)})
	if st.conflicts.Load() == 0 {
		t.Fatal("replica A's write met no conflict: the test did not interleave the flushes")
	}
	want := map[string]catalog.Consumer{
		"acme " + billing:  {CredentialID: "acme", Identity: billing, FirstSeen: at(5), LastSeen: at(20), Count: 8},
		"acme " + reports:  {CredentialID: "acme", Identity: reports, FirstSeen: at(15), LastSeen: at(15), Count: 1},
		"acme " + exporter: {CredentialID: "acme", Identity: exporter, FirstSeen: at(30), LastSeen: at(31), Count: 2},
	}
	for _, from := range []*Broker{a, b} {
		got := listAll(ctx, t, from, "")
		if len(got) != len(want) {
			t.Fatalf("catalog %v, want %v", got, want)
		}
		for k, w := range want {
			g := got[k]
			if g.Count != w.Count || !g.FirstSeen.Equal(w.FirstSeen) || !g.LastSeen.Equal(w.LastSeen) {
				t.Errorf("%s: got count %d first %s last %s; want %d %s %s", k, g.Count, g.FirstSeen, g.LastSeen, w.Count, w.FirstSeen, w.LastSeen)
			}
		}
	}
}

// A catalog write that landed but whose answer was lost (and replayed into a
// conflict by the Vault client) is not merged a second time.
func TestConsumerCatalogLostWriteAnswerIsNotMergedTwice(t *testing.T) {
	ctx := context.Background()
	st := &faultStore{Store: memstore.New(), conflictPrefix: catalog.KeyPrefix}
	b := newTestBroker(t, st)
	if _, err := b.Credentials().Create(ctx, "acme", catalogSpec()); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	record(ctx, t, b, []catalog.Use{use("acme", "svc", now, now, 2)})
	replayed := &fault{op: "put", prefix: catalog.KeyPrefix, once: true, replay: true}
	st.inject(replayed)
	record(ctx, t, b, []catalog.Use{use("acme", "svc", now, now, 3)})
	if replayed.hits.Load() == 0 || st.conflicts.Load() == 0 {
		t.Fatal("the write was not replayed into a conflict")
	}
	if c := listAll(ctx, t, b, "acme")["acme svc"]; c.Count != 5 {
		t.Fatalf("count %d after a replayed write, want 5", c.Count)
	}
}

// Many flushes of two replicas racing on one catalog lose no count and
// count nothing twice: with duty sharing off, both merging straight into
// the record; sharing, both writing inboxes and both merging every shard's
// (as FlushIssuance does) at once.
func TestConsumerCatalogConcurrentFlushesAddUp(t *testing.T) {
	t.Run("direct", func(t *testing.T) { testConcurrentFlushesAddUp(t, false, option.WithDutyLeasePeriod(0)) })
	t.Run("inboxes", func(t *testing.T) { testConcurrentFlushesAddUp(t, true) })
}

func testConcurrentFlushesAddUp(t *testing.T, merge bool, opts ...option.Option) {
	ctx := context.Background()
	st := &faultStore{Store: memstore.New(), conflictPrefix: catalog.KeyPrefix}
	replicas := []*Broker{newTestBroker(t, st, opts...), newTestBroker(t, st, opts...)}
	if _, err := replicas[0].Credentials().Create(ctx, "acme", catalogSpec()); err != nil {
		t.Fatal(err)
	}
	const flushes = 40
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var wg sync.WaitGroup
	for r, b := range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range flushes {
				seen := t0.Add(time.Duration(r*flushes+i) * time.Second)
				uses := []catalog.Use{use("acme", "shared", seen, seen, 1), use("acme", fmt.Sprintf("replica-%d", r), seen, seen, 2)}
				for range 100 {
					left, _ := b.Catalog().Record(ctx, uses)
					if len(left) == 0 {
						break
					}
					uses = left
				}
				if merge {
					_ = b.Catalog().MergeInboxes(ctx, time.Minute, time.Now(), true) // what fails, the last one merges
				}
			}
		}()
	}
	wg.Wait()
	if merge {
		mergeAll(ctx, t, replicas[0])
	}
	got := listAll(ctx, t, replicas[1], "acme")
	if c := got["acme shared"]; c.Count != 2*flushes || !c.FirstSeen.Equal(t0) || !c.LastSeen.Equal(t0.Add((2*flushes-1)*time.Second)) {
		t.Errorf("shared consumer: %+v; want count %d from %s to %s", c, 2*flushes, t0, t0.Add((2*flushes-1)*time.Second))
	}
	for r := range replicas {
		if c := got[fmt.Sprintf("acme replica-%d", r)]; c.Count != 2*flushes {
			t.Errorf("replica-%d consumer: count %d, want %d", r, c.Count, 2*flushes)
		}
	}
	t.Logf("catalog write conflicts: %d", st.conflicts.Load())
}

// A credential keeps at most MaxConsumersPerCredential identities; tokens of
// further identities are logged and counted, and the identities already
// listed keep being counted.
func TestConsumerCatalogIsBounded(t *testing.T) {
	ctx := context.Background()
	logs := &syncbuf.Buffer{}
	b := newTestBroker(t, memstore.New(), option.WithLogger(slog.New(slog.NewJSONHandler(logs, nil))))
	if _, err := b.Credentials().Create(ctx, "acme", catalogSpec()); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var uses []catalog.Use
	for i := range catalog.MaxConsumersPerCredential + 3 {
		uses = append(uses, use("acme", fmt.Sprintf("svc-%04d", i), now, now, 7))
	}
	record(ctx, t, b, uses)
	got := listAll(ctx, t, b, "acme")
	if len(got) != catalog.MaxConsumersPerCredential {
		t.Fatalf("%d identities kept, want the cap %d", len(got), catalog.MaxConsumersPerCredential)
	}
	if _, ok := got[fmt.Sprintf("acme svc-%04d", catalog.MaxConsumersPerCredential)]; ok {
		t.Error("an identity past the cap is listed")
	}
	if d := b.Stats().ConsumerTokensDropped; d != 3*7 {
		t.Errorf("ConsumerTokensDropped = %d, want %d", d, 3*7)
	}
	if !strings.Contains(logs.String(), "consumer catalog full") {
		t.Errorf("no log line says the catalog is full:\n%s", logs.String())
	}
	// A full catalog still counts the identities it lists.
	record(ctx, t, b, []catalog.Use{use("acme", "svc-0000", now.Add(time.Minute), now.Add(time.Minute), 1), use("acme", "latecomer", now, now, 1)})
	got = listAll(ctx, t, b, "acme")
	if c := got["acme svc-0000"]; c.Count != 8 || !c.LastSeen.Equal(now.Add(time.Minute)) {
		t.Errorf("listed identity in a full catalog: %+v; want count 8, last seen a minute later", c)
	}
	if d := b.Stats().ConsumerTokensDropped; d != 3*7+1 {
		t.Errorf("ConsumerTokensDropped = %d, want %d", d, 3*7+1)
	}
}

// Deleting a credential deletes its catalog, also when a flush races the
// delete; a catalog left by an earlier credential of the same id is not the
// new one's.
func TestConsumerCatalogGoesWithItsCredential(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	catalogGone := func(t *testing.T, st store.Store) {
		t.Helper()
		if _, err := st.Get(ctx, catalog.Key("acme")); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("catalog after the delete: %v; want not found", err)
		}
	}

	t.Run("delete", func(t *testing.T) {
		st := &faultStore{Store: memstore.New(), conflictPrefix: catalog.KeyPrefix}
		b := newTestBroker(t, st)
		if _, err := b.Credentials().Create(ctx, "acme", catalogSpec()); err != nil {
			t.Fatal(err)
		}
		record(ctx, t, b, []catalog.Use{use("acme", "svc", now, now, 1)})
		if err := b.Credentials().Delete(ctx, "acme"); err != nil {
			t.Fatal(err)
		}
		catalogGone(t, st)
		if _, _, err := b.Catalog().List(ctx, "acme", catalog.Cursor{}, 10); !errors.Is(err, brokererr.ErrNotFound) {
			t.Fatalf("ListConsumers of a deleted credential: %v; want ErrNotFound", err)
		}
		if got := listAll(ctx, t, b, ""); len(got) != 0 {
			t.Fatalf("catalog of a deleted credential listed: %v", got)
		}
		// Later uses of the deleted credential are dropped, not retried.
		left, err := b.Catalog().Record(ctx, []catalog.Use{use("acme", "svc", now, now, 1)})
		if len(left) != 0 || err != nil {
			t.Fatalf("RecordConsumers for a deleted credential = %v, %v; want dropped", left, err)
		}
		catalogGone(t, st)
	})

	t.Run("flush racing the delete", func(t *testing.T) {
		st := &faultStore{Store: memstore.New(), conflictPrefix: catalog.KeyPrefix}
		a, b := newTestBroker(t, st), newTestBroker(t, st)
		if _, err := a.Credentials().Create(ctx, "acme", catalogSpec()); err != nil {
			t.Fatal(err)
		}
		// B read the credential and is about to create the catalog when A
		// deletes the credential (and the catalog, which is not there yet).
		st.inject(&fault{op: "put", prefix: catalog.KeyPrefix, once: true, before: func() {
			if err := a.Credentials().Delete(ctx, "acme"); err != nil {
				t.Error(err)
			}
		}})
		left, err := b.Catalog().Record(ctx, []catalog.Use{use("acme", "svc", now, now, 1)})
		if len(left) != 0 || err != nil {
			t.Fatalf("RecordConsumers = %v, %v", left, err)
		}
		catalogGone(t, st)
	})

	t.Run("catalog of an earlier incarnation", func(t *testing.T) {
		st := &faultStore{Store: memstore.New(), conflictPrefix: catalog.KeyPrefix}
		b := newTestBroker(t, st)
		if _, err := b.Credentials().Create(ctx, "acme", catalogSpec()); err != nil {
			t.Fatal(err)
		}
		record(ctx, t, b, []catalog.Use{use("acme", "old-consumer", now, now, 4)})
		// The catalog survives a delete whose last step failed.
		up := st.inject(&fault{op: "delete", prefix: catalog.KeyPrefix, fail: errStoreDown})
		if err := b.Credentials().Delete(ctx, "acme"); err == nil {
			t.Fatal("DeleteCredential succeeded with the catalog delete failing")
		}
		up()
		if _, err := b.Credentials().Create(ctx, "acme", catalogSpec()); err != nil {
			t.Fatal(err)
		}
		if got := listAll(ctx, t, b, "acme"); len(got) != 0 {
			t.Fatalf("the recreated credential lists its predecessor's consumers: %v", got)
		}
		record(ctx, t, b, []catalog.Use{use("acme", "new-consumer", now, now, 1)})
		got := listAll(ctx, t, b, "acme")
		if len(got) != 1 || got["acme new-consumer"].Count != 1 {
			t.Fatalf("catalog of the recreated credential: %v; want only new-consumer", got)
		}
	})
}

func TestListConsumersPagingAndValidation(t *testing.T) {
	ctx := context.Background()
	b := newTestBroker(t, memstore.New())
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var uses []catalog.Use
	var want []string
	for _, cred := range []string{"alpha", "beta", "gamma"} {
		if _, err := b.Credentials().Create(ctx, cred, catalogSpec()); err != nil {
			t.Fatal(err)
		}
		if cred == "beta" {
			continue // no consumers: not listed
		}
		for _, id := range []string{"spiffe://x/b", "a.example", "spiffe://x/a"} {
			uses = append(uses, use(cred, id, now, now, 1))
		}
		want = append(want, cred+" a.example", cred+" spiffe://x/a", cred+" spiffe://x/b")
	}
	record(ctx, t, b, uses)

	for _, limit := range []int{1, 2, 5, 6, 100} {
		var got []string
		var after catalog.Cursor
		for range 20 {
			page, more, err := b.Catalog().List(ctx, "", after, limit)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) > limit {
				t.Fatalf("limit %d: page of %d", limit, len(page))
			}
			for _, c := range page {
				got = append(got, c.CredentialID+" "+c.Identity)
			}
			if !more {
				break
			}
			last := page[len(page)-1]
			after = catalog.Cursor{CredentialID: last.CredentialID, Identity: last.Identity}
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("limit %d: listed\n%s\nwant\n%s", limit, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}

	for _, tt := range []struct {
		name   string
		filter string
		after  catalog.Cursor
		limit  int
		field  string
	}{
		{"bad filter", "Not An ID", catalog.Cursor{}, 10, "credential_id"},
		{"zero limit", "", catalog.Cursor{}, 0, "page_size"},
		{"cursor of another credential", "alpha", catalog.Cursor{CredentialID: "gamma", Identity: "a.example"}, 10, "page_token"},
		{"cursor with a bad credential id", "", catalog.Cursor{CredentialID: "../x", Identity: "a"}, 10, "page_token"},
		{"cursor with an identity only", "", catalog.Cursor{Identity: "a"}, 10, "page_token"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := b.Catalog().List(ctx, tt.filter, tt.after, tt.limit)
			var inv *brokererr.InvalidArgumentError
			if !errors.As(err, &inv) || inv.Field != tt.field {
				t.Fatalf("ListConsumers = %v; want an invalid %s", err, tt.field)
			}
		})
	}
	if _, _, err := b.Catalog().List(ctx, "missing", catalog.Cursor{}, 10); !errors.Is(err, brokererr.ErrNotFound) {
		t.Fatalf("ListConsumers of a missing credential: %v; want ErrNotFound", err)
	}
	if got, more, err := b.Catalog().List(ctx, "beta", catalog.Cursor{}, 10); err != nil || more || len(got) != 0 {
		t.Fatalf("ListConsumers of a credential without consumers = %v, %v, %v; want none", got, more, err)
	}
}

// Malformed uses are refused and reported; the well-formed ones of the same
// batch are recorded.
func TestRecordConsumersRefusesMalformedUses(t *testing.T) {
	ctx := context.Background()
	b := newTestBroker(t, memstore.New())
	if _, err := b.Credentials().Create(ctx, "acme", catalogSpec()); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	left, err := b.Catalog().Record(ctx, []catalog.Use{
		use("acme", "good", now, now, 2),
		use("Bad ID", "svc", now, now, 1),
		use("acme", "", now, now, 1),
		use("acme", "line\nbreak", now, now, 1),
		use("acme", "zero", now, now, 0),
		use("acme", "backwards", now, now.Add(-time.Second), 1),
	})
	var inv *brokererr.InvalidArgumentError
	if !errors.As(err, &inv) {
		t.Fatalf("RecordConsumers error %v; want InvalidArgumentError", err)
	}
	if len(left) != 0 {
		t.Fatalf("malformed uses returned for a retry: %v", left)
	}
	mergeAll(ctx, t, b)
	got := listAll(ctx, t, b, "acme")
	if len(got) != 1 || got["acme good"].Count != 2 {
		t.Fatalf("catalog %v; want only the well-formed use", got)
	}
}

// A replica's inbox of a shard holds at most catalog.MaxInboxBatches of its
// unmerged batches, each at most catalog.MaxBatchBytes: with no holder
// merging them, further uses come back to be kept in memory (counted in
// Stats), and go once the holder has merged.
func TestConsumerInboxIsBounded(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	b := newTestBroker(t, st) // shares its store: uses go to inboxes
	if _, err := b.Credentials().Create(ctx, "acme", catalogSpec()); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	// One flush of 400 long identities: more than one batch's worth.
	const long = 400
	var uses []catalog.Use
	for i := range long {
		uses = append(uses, use("acme", fmt.Sprintf("spiffe://example.org/%0200d", i), now, now, 1))
	}
	if left, err := b.Catalog().Record(ctx, uses); len(left) != 0 || err != nil {
		t.Fatalf("Record: %d left, %v", len(left), err)
	}
	keys, err := st.List(ctx, fmt.Sprintf("%s%02d/", catalog.InboxPrefix, lease.ShardOf("acme")))
	if err != nil {
		t.Fatal(err)
	}
	parts := len(keys)
	if parts < 2 {
		t.Fatalf("%d batches for %d uses of 200-byte identities; want them split", parts, long)
	}
	for _, k := range keys {
		if rec, err := st.Get(ctx, k); err != nil || len(rec.Value) > catalog.MaxBatchBytes {
			t.Fatalf("batch %s: %d bytes (bound %d), %v", k, len(rec.Value), catalog.MaxBatchBytes, err)
		}
	}
	for n := parts; n < catalog.MaxInboxBatches; n++ {
		if left, err := b.Catalog().Record(ctx, []catalog.Use{use("acme", "svc", now, now, 1)}); len(left) != 0 || err != nil {
			t.Fatalf("Record with %d batches waiting: %d left, %v", n, len(left), err)
		}
	}
	left, err := b.Catalog().Record(ctx, []catalog.Use{use("acme", "svc", now, now, 1)})
	if len(left) != 1 || err == nil {
		t.Fatalf("Record into a full inbox: %d left, %v; want the use back and an error", len(left), err)
	}
	if n := b.Stats().Catalog.InboxFullUses; n != 1 {
		t.Fatalf("InboxFullUses = %d, want 1", n)
	}
	mergeAll(ctx, t, b) // the holder merges: room again
	record(ctx, t, b, left)
	got := listAll(ctx, t, b, "acme")
	if want := uint64(catalog.MaxInboxBatches - parts + 1); len(got) != long+1 || got["acme svc"].Count != want {
		t.Fatalf("catalog: %d identities, svc %d tokens; want %d and %d", len(got), got["acme svc"].Count, long+1, want)
	}
}

// A merge round writes at most catalog.MaxMergesPerRound catalog records;
// the rest wait for the next round, and nothing is lost.
func TestConsumerInboxMergeRoundIsBounded(t *testing.T) {
	ctx := context.Background()
	b := newTestBroker(t, memstore.New()) // shares its store: uses go to inboxes
	const extra = 5
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var uses []catalog.Use
	for i := range catalog.MaxMergesPerRound + extra {
		id := fmt.Sprintf("c-%05d", i)
		if _, err := b.Credentials().Create(ctx, id, catalogSpec()); err != nil {
			t.Fatal(err)
		}
		uses = append(uses, use(id, "svc", now, now, 1))
	}
	if left, err := b.Catalog().Record(ctx, uses); len(left) != 0 || err != nil {
		t.Fatalf("Record: %d left, %v", len(left), err)
	}
	if err := b.Catalog().MergeInboxes(ctx, time.Minute, time.Now(), true); err != nil {
		t.Fatal(err)
	}
	if n := b.Stats().Catalog.Merges; n != catalog.MaxMergesPerRound {
		t.Fatalf("one round wrote %d catalog records, want the bound %d", n, catalog.MaxMergesPerRound)
	}
	mergeAll(ctx, t, b)
	if n := b.Stats().Catalog.Merges; n != catalog.MaxMergesPerRound+extra {
		t.Fatalf("two rounds wrote %d catalog records, want %d", n, catalog.MaxMergesPerRound+extra)
	}
	got, _, err := b.Catalog().List(ctx, "", catalog.Cursor{}, 2*catalog.MaxMergesPerRound)
	if err != nil || len(got) != catalog.MaxMergesPerRound+extra {
		t.Fatalf("%d consumers listed, want %d (%v)", len(got), catalog.MaxMergesPerRound+extra, err)
	}
}
