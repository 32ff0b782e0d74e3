package broker

import (
	"context"
	"github.com/rotavault/rotavault/broker/catalog"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/option"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/vaultstore"
)

// listingBench is a broker over a store seeded with n credentials, and the
// pages measured on it.
type listingBench struct {
	n         int
	b         *Broker
	sw        *storeWork
	consumers bool
	// cold is how long the store's first page of credentials took (on
	// Vault: the folder's LIST).
	cold time.Duration
}

// benchPageSize is the CLI's page size.
const benchPageSize = 500

// newListingBench seeds n credentials (and their catalogs, withConsumers)
// into st and starts a broker on it that has loaded none of them; then it
// reads the measured pages once, so that the timed pages find their
// credentials loaded, as on a replica that has run for a while.
func newListingBench(b *testing.B, st store.Store, n int, withConsumers bool) *listingBench {
	sw := &storeWork{Store: st}
	br, err := New(context.Background(), Config{Store: sw, Provider: provider.New(nil), Auditor: &recordingAuditor{}},
		option.WithSchedulerInterval(time.Hour), option.WithIntrospectionInterval(0), option.WithDiscoveryInterval(0))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = br.Close() })
	seedListing(b, sw, n, withConsumers)
	lb := &listingBench{n: n, b: br, sw: sw, consumers: withConsumers}
	start := time.Now()
	if _, _, err := st.ListPage(context.Background(), family.CredentialsPrefix, "", benchPageSize); err != nil {
		b.Fatal(err)
	}
	lb.cold = time.Since(start)
	for i := range benchPositions {
		lb.page(b, i)
	}
	return lb
}

// benchPositions is how many places in the listing the pages start at.
const benchPositions = 16

// after is where the i-th measured page starts.
func (lb *listingBench) after(i int) string {
	if i%benchPositions == 0 {
		return ""
	}
	return listingID(lb.n * (i % benchPositions) / benchPositions)
}

// credentialsPage reads the i-th measured page of credentials and returns
// how long it took.
func (lb *listingBench) credentialsPage(b *testing.B, i int) time.Duration {
	start := time.Now()
	page, _, err := lb.b.Credentials().List(context.Background(), lb.after(i), benchPageSize)
	took := time.Since(start)
	if err != nil || len(page) == 0 {
		b.Fatalf("page after %q: %d credentials, %v", lb.after(i), len(page), err)
	}
	return took
}

// consumersPage is credentialsPage for the consumer catalog.
func (lb *listingBench) consumersPage(b *testing.B, i int) time.Duration {
	cursor := catalog.Cursor{}
	if after := lb.after(i); after != "" {
		cursor = catalog.Cursor{CredentialID: after, Identity: listingIdentity}
	}
	start := time.Now()
	cons, _, err := lb.b.Catalog().List(context.Background(), "", cursor, benchPageSize)
	took := time.Since(start)
	if err != nil || len(cons) == 0 {
		b.Fatalf("consumers after %+v: %d, %v", cursor, len(cons), err)
	}
	return took
}

func (lb *listingBench) page(b *testing.B, i int) {
	lb.credentialsPage(b, i)
	if lb.consumers {
		lb.consumersPage(b, i)
	}
}

// compareListingPages reads pages on small and on large by turns, so that
// drift hits both alike, and reports each one's time per page, their
// ratio, and the store calls and keys listed per page at the large size;
// for credentials, and for consumers when seeded.
func compareListingPages(b *testing.B, small, large *listingBench) {
	var credSmall, credLarge, consSmall, consLarge time.Duration
	var credWork, consWork work
	pages := 0
	for b.Loop() {
		credSmall += small.credentialsPage(b, pages)
		w := large.sw.measure(func() { credLarge += large.credentialsPage(b, pages) })
		credWork.calls, credWork.keys = credWork.calls+w.calls, credWork.keys+w.keys
		if large.consumers {
			consSmall += small.consumersPage(b, pages)
			w := large.sw.measure(func() { consLarge += large.consumersPage(b, pages) })
			consWork.calls, consWork.keys = consWork.calls+w.calls, consWork.keys+w.keys
		}
		pages++
	}
	report := func(what string, smallT, largeT time.Duration, w work) {
		n := float64(pages)
		b.ReportMetric(float64(smallT.Microseconds())/n, what+"-µs/page@"+strconv.Itoa(small.n))
		b.ReportMetric(float64(largeT.Microseconds())/n, what+"-µs/page@"+strconv.Itoa(large.n))
		b.ReportMetric(float64(largeT)/float64(smallT), what+"-large/small")
		b.ReportMetric(float64(w.calls)/n, what+"-store-calls/page")
		b.ReportMetric(float64(w.keys)/n, what+"-keys-listed/page")
	}
	report("credentials", credSmall, credLarge, credWork)
	if large.consumers {
		report("consumers", consSmall, consLarge, consWork)
	}
	b.ReportMetric(float64(large.cold.Microseconds())/1000, "first-store-page-ms@"+strconv.Itoa(large.n))
	b.ReportMetric(0, "ns/op")
}

// BenchmarkListPageEmbedded: a page of 500 credentials and one of 500
// consumers (the CLI's page size) at 1,000 vs 100,000 credentials on the
// embedded store, seeded through store.Store.
func BenchmarkListPageEmbedded(b *testing.B) {
	small := newListingBench(b, openBolt(b), 1000, true)
	large := newListingBench(b, openBolt(b), 100_000, true)
	compareListingPages(b, small, large)
}

// listVaultEnv sets how many credentials BenchmarkListPageVault seeds at
// the large size (default 20,000: a dev Vault takes two requests per
// creation, about 15 s for 20,000 and over a minute for 100,000).
const listVaultEnv = "ROTAVAULT_BENCH_LIST_VAULT_N"

// BenchmarkListPageVault: a page of 500 credentials at 1,000 vs 20,000
// (ROTAVAULT_BENCH_LIST_VAULT_N) credentials on a Vault dev server. The
// store's listing is fresh (pages within its refresh period, the steady
// state of a listing); the store's first page is reported apart
// (first-store-page-ms: the seeding replica's listing, kept current by its
// own writes). Then a replica started over the large store: its first page
// (restart-first-page-ms, waiting for what remains of the background
// load's LIST, the first listing after start) and, once it has loaded
// every credential, its first page after its listing has aged past every
// refresh period (aged-first-page-ms: served from the listing the notice
// log's hints keep current, while a background LIST runs).
func BenchmarkListPageVault(b *testing.B) {
	n := 20_000
	if v := os.Getenv(listVaultEnv); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 2000 {
			b.Fatalf("%s=%q: want a number of credentials ≥ 2000", listVaultEnv, v)
		}
	}
	srv := vaulttest.StartDev(b)
	open := func(prefix string) store.Store {
		vs, err := vaultstore.New(context.Background(), vaultstore.Config{Client: srv.Client(b), Prefix: prefix, ListRefresh: time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = vs.Close() })
		return vs
	}
	small := newListingBench(b, open("rotavault/small"), 1000, false)
	large := newListingBench(b, open("rotavault/large"), n, false)
	restart, aged := replicaFirstPages(b, srv, "rotavault/large")
	compareListingPages(b, small, large)
	b.ReportMetric(float64(restart.Microseconds())/1000, "restart-first-page-ms@"+strconv.Itoa(n))
	b.ReportMetric(float64(aged.Microseconds())/1000, "aged-first-page-ms@"+strconv.Itoa(n))
}

// replicaFirstPages starts a replica with the default refresh periods on
// the credentials under prefix and times its first page of credentials,
// from New, then its first page after its listing has aged an hour, once
// it has loaded every credential (a replica that has run for a while).
func replicaFirstPages(b *testing.B, srv *vaulttest.Server, prefix string) (restart, aged time.Duration) {
	ctx := context.Background()
	clock := fakeclock.New(time.Now())
	vs, err := vaultstore.New(ctx, vaultstore.Config{Client: srv.Client(b), Prefix: prefix, Now: clock.Now})
	if err != nil {
		b.Fatal(err)
	}
	defer vs.Close()
	start := time.Now()
	br, err := New(ctx, Config{Store: vs, Provider: provider.New(nil), Auditor: &recordingAuditor{}},
		option.WithSchedulerInterval(time.Hour), option.WithIntrospectionInterval(0), option.WithDiscoveryInterval(0))
	if err != nil {
		b.Fatal(err)
	}
	defer br.Close()
	page := func() time.Duration {
		page, _, err := br.Credentials().List(ctx, "", benchPageSize)
		if err != nil || len(page) != benchPageSize {
			b.Fatalf("replica's page: %d credentials, %v", len(page), err)
		}
		return time.Since(start)
	}
	restart = page()
	if err := br.loader.Await(ctx); err != nil {
		b.Fatal(err)
	}
	clock.Add(time.Hour)
	start = time.Now()
	return restart, page()
}
