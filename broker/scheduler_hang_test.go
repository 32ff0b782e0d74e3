package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/store/memstore"
)

// tokenServer answers refreshes with a new pair living lifetime, or, once
// hang is set, holds every request until the client gives up.
type tokenServer struct {
	*httptest.Server
	lifetime time.Duration
	hang     atomic.Bool
	served   atomic.Int32
	hanging  atomic.Int32
}

func startTokenServer(t *testing.T, lifetime time.Duration) *tokenServer {
	t.Helper()
	ts := &tokenServer{lifetime: lifetime}
	release := make(chan struct{})
	ts.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ts.hang.Load() {
			ts.hanging.Add(1)
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return
		}
		n := ts.served.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": fmt.Sprintf("at-%d", n), "refresh_token": fmt.Sprintf("rt-%d", n),
			"expires_in": int(ts.lifetime / time.Second)})
	}))
	t.Cleanup(ts.Close) // runs after release is closed
	t.Cleanup(func() { close(release) })
	return ts
}

// A provider that stops answering must not delay other credentials'
// proactive refreshes: with 30 credentials on a hanging token endpoint, a
// healthy credential is refreshed within one scheduler tick of its due
// time.
func TestHangingProviderDoesNotDelayOthers(t *testing.T) {
	const tick = 5 * time.Second // the default scheduler interval
	ctx := context.Background()
	clk := fakeclock.New(time.Now())
	b := newTestBroker(t, memstore.New(), option.WithClock(clk.Now), option.WithSchedulerInterval(tick))
	hanging := startTokenServer(t, time.Hour)
	healthy := startTokenServer(t, 2*time.Hour)
	install := func(id string, srv *tokenServer) {
		t.Helper()
		if _, err := b.Credentials().Create(ctx, id, credspec.Spec{ProviderKind: credspec.ProviderOAuth2, TokenURL: srv.URL, ClientID: "c"}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.ImportRefreshToken(ctx, id, "rt-0"); err != nil {
			t.Fatal(err)
		}
		if _, err := b.GetAccessToken(ctx, access.Request{CredentialID: id}); err != nil { // in use: refreshed ahead
			t.Fatal(err)
		}
	}
	for i := range 30 {
		install(fmt.Sprintf("hanging-%d", i), hanging)
	}
	install("healthy", healthy)
	before := healthy.served.Load()

	// The hanging endpoint's 30 credentials fall due and their refreshes
	// hang; the healthy one is not due yet.
	hanging.hang.Store(true)
	clk.Add(time.Hour)
	poll.Until(t, 3*tick, "refreshes hanging at the provider", func() bool { return hanging.hanging.Load() >= maxScheduledPerEndpoint })

	// Now the healthy credential falls due.
	clk.Add(time.Hour)
	poll.Until(t, tick+2*time.Second, "the healthy credential refreshed within one tick of its due time", func() bool {
		return healthy.served.Load() > before
	})
	if n := hanging.hanging.Load(); n > maxScheduledPerEndpoint {
		t.Errorf("%d refreshes hang at one endpoint, want at most %d", n, maxScheduledPerEndpoint)
	}
}
