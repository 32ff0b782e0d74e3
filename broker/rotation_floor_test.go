package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/broker/pacing"
	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/store/memstore"
)

// shortLivedProvider is a token endpoint whose access tokens live
// expiresIn (omitted from the answer when zero: the credential's configured
// lifetime applies). It counts the refreshes presented to it.
func shortLivedProvider(t *testing.T, expiresIn time.Duration) (url string, refreshes *atomic.Int32) {
	refreshes = new(atomic.Int32)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := refreshes.Add(1)
		answer := map[string]any{"access_token": fmt.Sprintf("at-%d", n), "refresh_token": fmt.Sprintf("rt-%d", n), "token_type": "Bearer"}
		if expiresIn > 0 {
			answer["expires_in"] = expiresIn.Seconds()
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(answer)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, refreshes
}

// setupShortLived starts a broker on a fake clock with one credential "x"
// imported (one refresh) from a provider whose tokens live expiresIn, or
// configured to live configured.
func setupShortLived(t *testing.T, expiresIn, configured time.Duration) (*Broker, *fakeclock.Clock, *atomic.Int32) {
	t.Helper()
	url, refreshes := shortLivedProvider(t, expiresIn)
	clk := fakeclock.New(time.Now())
	b := newTestBroker(t, memstore.New(), option.WithClock(clk.Now), option.WithSchedulerInterval(time.Hour))
	ctx := context.Background()
	spec := credspec.Spec{ProviderKind: credspec.ProviderOAuth2, TokenURL: url, ClientID: "c", ClientSecret: "s", AccessTokenLife: configured}
	if _, err := b.Credentials().Create(ctx, "x", spec); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ImportRefreshToken(ctx, "x", "rt-0"); err != nil {
		t.Fatal(err)
	}
	return b, clk, refreshes
}

// A provider whose access tokens live no longer than the 10 s expiry delta
// (expires_in 5 or 10, or a credential configured with a 10 s lifetime)
// used to make every GetAccessToken a refresh: no token was ever "fresh".
// With the margin derived from the lifetime and the rotation floor, 200
// calls within one token lifetime cost at most 2 refreshes, whether they
// come one after another or all at once.
func TestShortLivedTokensCostAtMostTwoRotationsPer200Calls(t *testing.T) {
	cases := []struct {
		name                  string
		expiresIn, configured time.Duration
	}{
		{"expires_in 5", 5 * time.Second, 0},
		{"expires_in 10", 10 * time.Second, 0},
		{"expires_in 11", 11 * time.Second, 0},
		{"configured 10s", 0, 10 * time.Second},
	}
	const calls = 200
	ctx := context.Background()
	for _, c := range cases {
		life := max(c.expiresIn, c.configured)
		t.Run(c.name+"/sequential", func(t *testing.T) {
			b, clk, refreshes := setupShortLived(t, c.expiresIn, c.configured)
			before := refreshes.Load()
			// The calls spread evenly over one lifetime; the last one comes
			// when the imported token expires.
			for range calls {
				clk.Add(life / calls)
				if _, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x"}); err != nil {
					t.Fatal(err)
				}
			}
			if n := refreshes.Load() - before; n > 2 {
				t.Errorf("%d sequential calls within one %s lifetime cost %d refreshes, want at most 2", calls, life, n)
			}
			t.Logf("%s sequential: %d refreshes", c.name, refreshes.Load()-before)
		})
		t.Run(c.name+"/concurrent", func(t *testing.T) {
			b, clk, refreshes := setupShortLived(t, c.expiresIn, c.configured)
			before := refreshes.Load()
			// Four fifths into the lifetime: past the old 10 s margin for
			// every case, so each caller wants a refresh.
			clk.Add(life * 4 / 5)
			var wg sync.WaitGroup
			errs := make(chan error, calls)
			for range calls {
				wg.Go(func() {
					if _, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x"}); err != nil {
						errs <- err
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if n := refreshes.Load() - before; n > 2 {
				t.Errorf("%d concurrent calls cost %d refreshes, want at most 2", calls, n)
			}
			t.Logf("%s concurrent: %d refreshes", c.name, refreshes.Load()-before)
		})
	}
}

// When the floor holds a caller back it gets the current token, and the
// metric and last_error say why it was not refreshed; a token that expired
// before the floor lifts (tokens living under 5 s) is not handed out:
// UNAVAILABLE, with the time the floor lifts.
func TestRotationFloorServesTheCurrentTokenAndSaysSo(t *testing.T) {
	ctx := context.Background()
	t.Run("current token", func(t *testing.T) {
		b, clk, refreshes := setupShortLived(t, 5*time.Second, 0)
		first, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x"})
		if err != nil {
			t.Fatal(err)
		}
		clk.Add(4 * time.Second) // past the 1.25 s margin, before the 5 s floor
		before := refreshes.Load()
		tok, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x"})
		if err != nil {
			t.Fatal(err)
		}
		if tok.Token != first.Token || refreshes.Load() != before {
			t.Errorf("held back: got %q after %d refreshes, want the current %q and none", tok.Token, refreshes.Load()-before, first.Token)
		}
		if n := b.Stats().RotationsHeldBack; n != 1 {
			t.Errorf("RotationsHeldBack = %d, want 1", n)
		}
		c, err := b.Credentials().Get(ctx, "x")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(c.LastError, "at most one refresh per 5s") {
			t.Errorf("last_error %q, want it to name the rotation floor", c.LastError)
		}
		// Once the floor lifts the token is refreshed, and last_error clears.
		clk.Add(time.Second)
		tok, err = b.GetAccessToken(ctx, access.Request{CredentialID: "x"})
		if err != nil {
			t.Fatal(err)
		}
		if tok.Token == first.Token || refreshes.Load() != before+1 {
			t.Errorf("after the floor: got %q after %d refreshes, want a new token from one refresh", tok.Token, refreshes.Load()-before)
		}
		if c, _ := b.Credentials().Get(ctx, "x"); c.LastError != "" {
			t.Errorf("last_error %q after a refresh, want none", c.LastError)
		}
	})
	t.Run("min_remaining between half and three quarters", func(t *testing.T) {
		b, clk, refreshes := setupShortLived(t, time.Hour, 0)
		req := access.Request{CredentialID: "x", MinRemaining: 40 * time.Minute}
		first, err := b.GetAccessToken(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		before := refreshes.Load()
		clk.Add(25 * time.Minute) // 35 min left, less than asked; refreshed 25 min ago
		if tok, err := b.GetAccessToken(ctx, req); err != nil || tok.Token != first.Token || refreshes.Load() != before {
			t.Fatalf("before half the lifetime: %q, %v after %d refreshes; want the current token and none", tok.Token, err, refreshes.Load()-before)
		}
		clk.Add(5 * time.Minute) // half the lifetime: the floor lifts
		if tok, err := b.GetAccessToken(ctx, req); err != nil || tok.Token == first.Token || refreshes.Load() != before+1 {
			t.Fatalf("at half the lifetime: %q, %v after %d refreshes; want a new token from one refresh", tok.Token, err, refreshes.Load()-before)
		}
	})
	t.Run("scheduler", func(t *testing.T) {
		// A used 5 s token would be due 2.75 s after its refresh (a tenth of
		// its life plus the margin before expiry): the floor puts it at 5 s.
		b, clk, _ := setupShortLived(t, 5*time.Second, 0)
		c, err := b.Credentials().Get(ctx, "x")
		if err != nil {
			t.Fatal(err)
		}
		if next := c.NextRefreshAt.Sub(clk.Now()); next != 5*time.Second {
			t.Errorf("next scheduled refresh in %s, want 5s (the rotation floor)", next)
		}
	})
	t.Run("expired token", func(t *testing.T) {
		b, clk, refreshes := setupShortLived(t, 2*time.Second, 0)
		clk.Add(3 * time.Second) // expired, 2 s before the 5 s floor lifts
		before := refreshes.Load()
		_, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x"})
		var ue *brokererr.UnavailableError
		if !errors.As(err, &ue) || ue.RetryAfter != 2*time.Second || !errors.Is(err, pacing.ErrRotationFloor) {
			t.Fatalf("err = %v, want UNAVAILABLE for 2s naming the rotation floor", err)
		}
		if refreshes.Load() != before {
			t.Errorf("%d refreshes, want none before the floor lifts", refreshes.Load()-before)
		}
	})
}

func TestExpiryMarginAndRotationInterval(t *testing.T) {
	for _, c := range []struct {
		life, margin, interval time.Duration
	}{
		{2 * time.Second, 500 * time.Millisecond, 5 * time.Second},
		{5 * time.Second, 1250 * time.Millisecond, 5 * time.Second},
		{10 * time.Second, 2500 * time.Millisecond, 5 * time.Second},
		{11 * time.Second, 2750 * time.Millisecond, 5500 * time.Millisecond},
		{40 * time.Second, 10 * time.Second, 20 * time.Second},
		{time.Hour, 10 * time.Second, 30 * time.Minute},
	} {
		if m := pacing.ExpiryMargin(10*time.Second, c.life); m != c.margin {
			t.Errorf("pacing.ExpiryMargin(10s, %s) = %s, want %s", c.life, m, c.margin)
		}
		if i := pacing.RotationInterval(c.life); i != c.interval {
			t.Errorf("pacing.RotationInterval(%s) = %s, want %s", c.life, i, c.interval)
		}
	}
}
