package broker

import (
	"context"
	"fmt"
	"github.com/rotavault/rotavault/broker/catalog"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/poll"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/boltstore"
	"github.com/rotavault/rotavault/broker/registry"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/storetest"
)

// storeWork counts a store's calls on credentials, families and consumer
// catalogs, and the keys its listings of them returned: the work a listing
// page asks of the store. The notice log's polls, which run meanwhile, are
// not counted.
type storeWork struct {
	store.Store
	calls, keys atomic.Int64
}

var _ store.Store = (*storeWork)(nil)

func (s *storeWork) count(key string, keys int) {
	for _, p := range []string{family.CredentialsPrefix, "families/", catalog.KeyPrefix} {
		if strings.HasPrefix(key, p) {
			s.calls.Add(1)
			s.keys.Add(int64(keys))
			return
		}
	}
}

func (s *storeWork) Get(ctx context.Context, key string) (store.Record, error) {
	s.count(key, 0)
	return s.Store.Get(ctx, key)
}

func (s *storeWork) Put(ctx context.Context, key string, value []byte, expected uint64) (uint64, error) {
	s.count(key, 0)
	return s.Store.Put(ctx, key, value, expected)
}

func (s *storeWork) Delete(ctx context.Context, key string) error {
	s.count(key, 0)
	return s.Store.Delete(ctx, key)
}

func (s *storeWork) List(ctx context.Context, prefix string) ([]string, error) {
	keys, err := s.Store.List(ctx, prefix)
	s.count(prefix, len(keys))
	return keys, err
}

func (s *storeWork) ListPage(ctx context.Context, prefix, after string, limit int) ([]string, bool, error) {
	keys, more, err := s.Store.ListPage(ctx, prefix, after, limit)
	s.count(prefix, len(keys))
	return keys, more, err
}

// work is what one call asked of the store.
type work struct{ calls, keys int64 }

func (s *storeWork) measure(f func()) work {
	c0, k0 := s.calls.Load(), s.keys.Load()
	f()
	return work{s.calls.Load() - c0, s.keys.Load() - k0}
}

// openBolt opens an embedded store in a temporary directory.
func openBolt(tb testing.TB) *boltstore.Store {
	tb.Helper()
	dir := tb.TempDir()
	key, err := boltstore.GenerateKeyFile(filepath.Join(dir, "store.key"))
	if err != nil {
		tb.Fatal(err)
	}
	bs, err := boltstore.Open(filepath.Join(dir, "rotavault.db"), key, boltstore.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = bs.Close() })
	return bs
}

// listingID is the id of the i-th seeded credential; ids sort as i does.
func listingID(i int) string { return fmt.Sprintf("tenant-%07d", i) }

// listingIdentity is the one consumer seeded for every credential.
const listingIdentity = "spiffe://example.org/billing"

// seedListing writes n credentials (no family: awaiting reauthentication)
// and, withConsumers, a consumer catalog of one identity for each, straight
// through st (storetest.Seed): the API would take minutes for 100,000.
func seedListing(tb testing.TB, st store.Store, n int, withConsumers bool) {
	tb.Helper()
	ctx := context.Background()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	spec := credspec.Spec{ProviderKind: credspec.ProviderSalesforce, BaseURL: "https://login.example.com", ClientID: "client", Scopes: []string{"api", "refresh_token"}}
	err := storetest.Seed(ctx, st, n, func(i int) ([]store.Record, error) {
		id := listingID(i)
		inc := fmt.Sprintf("inc%d", i)
		cred, err := encodeRecord(&family.Credential{Format: recordFormat, ID: id, Incarnation: inc, Spec: spec, CreatedAt: now, UpdatedAt: now})
		// The catalog's record, as package catalog writes it.
		cat := fmt.Sprintf(`{"format":1,"incarnation":%q,"consumers":[{"identity":%q,"first_seen":"2026-01-01T00:00:00Z","last_seen":"2026-01-01T00:00:00Z","count":1}]}`, inc, listingIdentity)
		recs := []store.Record{{Key: family.CredentialKey(id), Value: cred}}
		if withConsumers {
			recs = append(recs, store.Record{Key: catalog.Key(id), Value: []byte(cat)})
		}
		return recs, err
	})
	if err != nil {
		tb.Fatal(err)
	}
}

// listingPages are where the measured pages start: the first, one in the
// middle, the last.
func listingPages(n int) []string { return []string{"", listingID(n / 2), listingID(n - 50)} }

// A page of ListCredentials or ListConsumers asks the same of the store at
// 20,000 credentials as at 1,000: one page of keys from the store's
// ListPage and the reads of the credentials on the page, never a listing of
// every key. The broker starts before the credentials are seeded, so it has
// loaded none: each page also pays the reads of every credential it shows,
// the worst case.
func TestListingPageStoreWorkDoesNotGrowWithCredentials(t *testing.T) {
	const pageSize = 100
	measure := func(n int) (creds, consumers []work) {
		sw := &storeWork{Store: openBolt(t)}
		b := newTestBroker(t, sw, option.WithSchedulerInterval(time.Hour), option.WithIntrospectionInterval(0), option.WithDiscoveryInterval(0))
		// The background load lists the store once at start: let it find
		// the store empty, so that no credential is loaded at either size
		// (one that was costs its page no reads, and a race with the
		// seeding made the pages of one size cheaper than the other's).
		poll.Until(t, 10*time.Second, "the background load of the empty store", func() bool {
			l := b.Stats().Loading
			return l.Listed && l.Loaded == l.ToLoad
		})
		seedListing(t, sw, n, true)
		ctx := t.Context()
		for _, after := range listingPages(n) {
			var page []registry.Credential
			var more bool
			creds = append(creds, sw.measure(func() {
				var err error
				if page, more, err = b.Credentials().List(ctx, after, pageSize); err != nil {
					t.Fatal(err)
				}
			}))
			wantIDs := min(pageSize, n-1-idIndex(t, after))
			if after == "" {
				wantIDs = pageSize
			}
			if len(page) != wantIDs || page[0].ID <= after || more != (wantIDs == pageSize && page[len(page)-1].ID != listingID(n-1)) {
				t.Fatalf("n=%d: page after %q: %d credentials from %q, more %v", n, after, len(page), page[0].ID, more)
			}
			var cons []catalog.Consumer
			consumers = append(consumers, sw.measure(func() {
				var err error
				cursor := catalog.Cursor{}
				if after != "" {
					cursor = catalog.Cursor{CredentialID: after, Identity: listingIdentity}
				}
				if cons, _, err = b.Catalog().List(ctx, "", cursor, pageSize); err != nil {
					t.Fatal(err)
				}
			}))
			if len(cons) != wantIDs || cons[0].CredentialID != page[0].ID || cons[0].Identity != listingIdentity {
				t.Fatalf("n=%d: consumers after %q: %d, first %+v; want one per credential of the page", n, after, len(cons), cons[0])
			}
		}
		return creds, consumers
	}
	smallCreds, smallCons := measure(1000)
	largeCreds, largeCons := measure(20000)
	for i, after := range []string{"first", "middle", "last"} {
		t.Logf("%s page of %d: credentials %+v at 1,000, %+v at 20,000; consumers %+v, %+v",
			after, pageSize, smallCreds[i], largeCreds[i], smallCons[i], largeCons[i])
		if largeCreds[i].calls > smallCreds[i].calls || largeCreds[i].keys > smallCreds[i].keys ||
			largeCons[i].calls > smallCons[i].calls || largeCons[i].keys > smallCons[i].keys {
			t.Errorf("%s page: the store work grew with the number of credentials", after)
		}
		if largeCreds[i].keys > pageSize+1 || largeCons[i].keys > 2*(pageSize+1) {
			t.Errorf("%s page: the store listed %d (credentials) and %d (consumers) keys for a page of %d", after, largeCreds[i].keys, largeCons[i].keys, pageSize)
		}
	}
}

// idIndex is the index listingID gave id; -1 for "".
func idIndex(t *testing.T, id string) int {
	if id == "" {
		return -1
	}
	var i int
	if _, err := fmt.Sscanf(strings.TrimPrefix(id, "tenant-"), "%d", &i); err != nil {
		t.Fatal(err)
	}
	return i
}
