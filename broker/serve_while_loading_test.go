package broker

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/memstore"
)

// storedCredentials leaves the credentials ids in st, each with an active
// family whose access token has an hour left at ts, as a replica that
// stopped leaves them.
func storedCredentials(t *testing.T, st store.Store, ts *tokenServer, spec credspec.Spec, ids ...string) {
	t.Helper()
	ctx := context.Background()
	b, err := New(ctx, Config{Store: st, Provider: provider.New(nil), Auditor: &recordingAuditor{}}, option.WithSchedulerInterval(time.Hour), option.WithIntrospectionInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	spec.ProviderKind, spec.TokenURL, spec.ClientID = credspec.ProviderOAuth2, ts.URL, "c"
	for _, id := range ids {
		if _, err := b.Credentials().Create(ctx, id, spec); err != nil {
			t.Fatal(err)
		}
		if _, err := b.ImportRefreshToken(ctx, id, "rt-0"); err != nil {
			t.Fatal(err)
		}
		if _, err := b.GetAccessToken(ctx, access.Request{CredentialID: id}); err != nil {
			t.Fatal(err)
		}
	}
}

// gate holds the reads of the credential records it matches until it is
// opened: a store slow to load from.
type gate struct {
	open    chan struct{}
	once    sync.Once
	waiting atomic.Int64
}

func holdReads(t *testing.T, fs *faultStore, prefix string) *gate {
	g := &gate{open: make(chan struct{})}
	fs.inject(&fault{op: "get", prefix: family.CredentialKey(prefix), before: func() {
		g.waiting.Add(1)
		<-g.open
	}})
	t.Cleanup(g.release) // before the broker's Close, which waits for the loader
	return g
}

func (g *gate) release() { g.once.Do(func() { close(g.open) }) }

// A replica answers while its credentials still load: New returns, and a
// call for a credential the loader has not reached is answered, while the
// loader is held on the others.
func TestServesBeforeTheCredentialsAreLoaded(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	ts := startTokenServer(t, time.Hour)
	storedCredentials(t, st, ts, credspec.Spec{}, "held-0", "held-1", "held-2", "asked")
	served := ts.served.Load()

	fs := &faultStore{Store: st}
	g := holdReads(t, fs, "held-")
	started := make(chan *Broker, 1)
	go func() {
		b, err := New(ctx, Config{Store: fs, Provider: provider.New(nil), Auditor: &recordingAuditor{}}, option.WithSchedulerInterval(time.Hour), option.WithIntrospectionInterval(0))
		if err != nil {
			t.Error(err)
		}
		started <- b
	}()
	var b *Broker
	poll.Until(t, 10*time.Second, "New returns while credential reads are held", func() bool {
		select {
		case b = <-started:
			return true
		default:
			return false
		}
	})
	if b == nil {
		t.FailNow()
	}
	t.Cleanup(func() { _ = b.Close() })
	poll.Until(t, 10*time.Second, "the loader waits on the held credentials", func() bool { return g.waiting.Load() == 3 })

	tok, err := b.GetAccessToken(ctx, access.Request{CredentialID: "asked"})
	if err != nil {
		t.Fatalf("a call while the others load: %v", err)
	}
	if tok.Token == "" || ts.served.Load() != served {
		t.Fatalf("answered %q with %d refreshes; want the stored token, no refresh", tok.Token, ts.served.Load()-served)
	}
	if s := b.Stats().Loading; s.ToLoad != 4 || s.Loaded > 1 {
		t.Fatalf("progress while held: %+v, want 4 to load, at most 1 loaded", s)
	}
	g.release()
	if err := b.loader.Await(ctx); err != nil {
		t.Fatal(err)
	}
	if s := b.Stats().Loading; s.Loaded != 4 || s.Failures != 0 {
		t.Fatalf("progress once loaded: %+v", s)
	}
}

// A credential a call asks for while the loader reads it is read once: the
// call waits for the loader's read instead of making its own.
func TestCallAndLoaderReadACredentialOnce(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	ts := startTokenServer(t, time.Hour)
	storedCredentials(t, st, ts, credspec.Spec{}, "race")

	fs := &faultStore{Store: st}
	g := holdReads(t, fs, "race")
	b := newBroker(t, Config{Store: fs, Provider: provider.New(nil), Auditor: &recordingAuditor{}}, option.WithSchedulerInterval(time.Hour), option.WithIntrospectionInterval(0))
	poll.Until(t, 10*time.Second, "the loader reads the credential", func() bool { return g.waiting.Load() == 1 })

	answered := make(chan error, 1)
	go func() {
		_, err := b.GetAccessToken(ctx, access.Request{CredentialID: "race"})
		answered <- err
	}()
	poll.Until(t, 10*time.Second, "the call waits for the loader's read, or reads again", func() bool {
		return b.Stats().Loading.Shared == 1 || g.waiting.Load() > 1
	})
	g.release()
	if err := <-answered; err != nil {
		t.Fatal(err)
	}
	if err := b.loader.Await(ctx); err != nil {
		t.Fatal(err)
	}
	if n := g.waiting.Load(); n != 1 {
		t.Fatalf("the credential record was read %d times, want once", n)
	}
}

// A credential whose load fails while the store is down is loaded once it
// is back: retried with backoff, never dropped.
func TestLoadFailingWhileTheStoreIsDownIsRetried(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	ts := startTokenServer(t, time.Hour)
	storedCredentials(t, st, ts, credspec.Spec{}, "a", "b")

	fs := &faultStore{Store: st}
	down := fs.inject(&fault{op: "get", prefix: family.CredentialsPrefix, fail: errStoreDown})
	b := newBroker(t, Config{Store: fs, Provider: provider.New(nil), Auditor: &recordingAuditor{}},
		option.WithSchedulerInterval(time.Hour), option.WithIntrospectionInterval(0), option.WithRetryBase(time.Millisecond))
	poll.Until(t, 10*time.Second, "loads failing and retried", func() bool { return b.Stats().Loading.Failures >= 6 })
	down()
	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := b.loader.Await(waitCtx); err != nil {
		t.Fatalf("the load after the store came back: %v (progress %+v)", err, b.Stats().Loading)
	}
	for _, id := range []string{"a", "b"} {
		if _, ok := b.entries[id]; !ok {
			t.Errorf("%s not loaded", id)
		}
	}
}

// After a restart the scheduler refreshes a credential nobody asks for:
// one whose refresh token the provider expires when it goes unused
// (refresh_token_idle_timeout) is refreshed half-way through it.
func TestSchedulerRefreshesACredentialNoCallerAskedForAfterARestart(t *testing.T) {
	st := memstore.New()
	ts := startTokenServer(t, 24*time.Hour)
	ids := make([]string, 40)
	for i := range ids {
		ids[i] = fmt.Sprintf("idle-%d", i)
	}
	storedCredentials(t, st, ts, credspec.Spec{RefreshIdle: 2 * time.Hour}, ids...)
	served := ts.served.Load()

	clk := fakeclock.New(time.Now())
	b := newTestBroker(t, st, option.WithClock(clk.Now), option.WithSchedulerInterval(10*time.Millisecond), option.WithIntrospectionInterval(0))
	clk.Add(61 * time.Minute)
	poll.Until(t, 20*time.Second, "every idle credential refreshed by the scheduler", func() bool {
		return int(ts.served.Load()-served) >= len(ids)
	})
	if s := b.Stats(); s.CacheHits+s.CacheMisses != 0 {
		t.Fatalf("%d calls: the test asks for none", s.CacheHits+s.CacheMisses)
	}
}
