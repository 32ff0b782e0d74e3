package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/store/memstore"
)

// A provider that says its access tokens live 1e12 seconds (31,700 years,
// capped at 100) would have them never refreshed: a token revoked at the
// provider would be handed out until then. Such a lifetime is not believed:
// the credential's configured lifetime applies, and last_error says so.
func TestAbsurdTokenLifetimeIsTakenAsTheConfiguredOne(t *testing.T) {
	var refreshes atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := refreshes.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"access_token": fmt.Sprintf("at-%d", n), "refresh_token": fmt.Sprintf("rt-%d", n),
			"token_type": "Bearer", "expires_in": 1e12,
		})
	}))
	t.Cleanup(srv.Close)
	ctx := context.Background()
	clk := fakeclock.New(time.Now())
	b := newTestBroker(t, memstore.New(), option.WithClock(clk.Now), option.WithSchedulerInterval(time.Hour))
	const configured = 2 * time.Hour
	spec := credspec.Spec{ProviderKind: credspec.ProviderOAuth2, TokenURL: srv.URL, ClientID: "c", ClientSecret: "s", AccessTokenLife: configured}
	if _, err := b.Credentials().Create(ctx, "x", spec); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ImportRefreshToken(ctx, "x", "rt-0"); err != nil {
		t.Fatal(err)
	}
	c, err := b.Credentials().Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if life := c.AccessExpiresAt.Sub(c.AccessIssuedAt); life != configured {
		t.Errorf("access token lifetime %s, want the configured %s", life, configured)
	}
	if !strings.Contains(c.LastError, "beyond the believable") || !strings.Contains(c.LastError, configured.String()) {
		t.Errorf("last_error %q, want it to say the provider's lifetime was not believed", c.LastError)
	}
	if next := c.NextRefreshAt.Sub(clk.Now()); next <= 0 || next > configured {
		t.Errorf("next refresh in %s, want within the configured lifetime", next)
	}
	// Past the configured lifetime the token is refreshed, not served.
	clk.Add(configured)
	tok, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if tok.Token != "at-2" || refreshes.Load() != 2 {
		t.Errorf("after the configured lifetime got %q after %d refreshes, want a fresh token (at-2)", tok.Token, refreshes.Load())
	}
}
