package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/client"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/providersim"
)

func TestCachedTokenDoesNotCallTheServer(t *testing.T) {
	e := newEnv(t)
	if err := e.install(ctxT(t), "acme"); err != nil {
		t.Fatal(err)
	}
	c := e.watchingClient(t)

	first := mustToken(t, c, "acme")
	if !e.sim.AccessTokenActive(first.AccessToken) || first.Generation != 1 || first.InstanceURL != e.sim.URL() || first.TokenType != "Bearer" {
		t.Fatalf("first token = %v (instance %q, type %q)", first, first.InstanceURL, first.TokenType)
	}
	for range 10 {
		if tok := mustToken(t, c, "acme"); tok != first {
			t.Fatalf("cached call returned %v, want %v", tok, first)
		}
	}
	if got := e.calls.Load(); got != 1 {
		t.Fatalf("server saw %d GetAccessToken calls for 11 Token calls, want 1", got)
	}
}

func TestConcurrentCallersShareOneCall(t *testing.T) {
	e := newEnv(t)
	if err := e.install(ctxT(t), "acme"); err != nil {
		t.Fatal(err)
	}
	c := e.watchingClient(t)
	e.expire()                               // the server must refresh...
	e.sim.SetLatency(200 * time.Millisecond) // ...slowly, while the callers pile up
	before := e.sim.Stats().RefreshRequests

	const callers = 64
	toks := make([]client.Token, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() { toks[i], errs[i] = c.Token(ctxT(t), "acme") })
	}
	wg.Wait()
	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if toks[i] != toks[0] || toks[i].Generation != 2 {
			t.Fatalf("caller %d got %v, caller 0 %v", i, toks[i], toks[0])
		}
	}
	if got := e.calls.Load(); got != 1 {
		t.Fatalf("server saw %d GetAccessToken calls from %d concurrent callers, want 1", got, callers)
	}
	if got := e.sim.Stats().RefreshRequests - before; got != 1 {
		t.Fatalf("provider saw %d refreshes, want 1", got)
	}
}

// A cached token is handed out until its refresh margin; then the Client
// asks for a token with at least the margin left, which the server
// refreshes.
func TestRefreshMargin(t *testing.T) {
	for _, tc := range []struct {
		name     string
		margin   time.Duration
		hitAt    time.Duration // after issue: still served from the cache
		refillAt time.Duration // after issue: within the margin
	}{
		{name: "one minute", margin: time.Minute, hitAt: 8*time.Minute + 30*time.Second, refillAt: 9*time.Minute + 30*time.Second},
		// An hour is more than the 10-minute tokens live: a quarter of
		// their lifetime (2m30s) is used, or nothing would be cached.
		{name: "longer than the tokens live", margin: time.Hour, hitAt: 7 * time.Minute, refillAt: 8 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			if err := e.install(ctxT(t), "acme"); err != nil {
				t.Fatal(err)
			}
			c := e.watchingClient(t, client.WithRefreshMargin(tc.margin))
			// The token the import produced was issued at the clock's
			// present; measure from its issue time.
			first := mustToken(t, c, "acme")
			e.clock.advance(first.IssuedAt.Add(tc.hitAt).Sub(e.clock.now()))
			if tok := mustToken(t, c, "acme"); tok != first || e.calls.Load() != 1 {
				t.Fatalf("%s after issue: %v (%d server calls), want the cached %v", tc.hitAt, tok, e.calls.Load(), first)
			}
			e.clock.advance(tc.refillAt - tc.hitAt)
			second := mustToken(t, c, "acme")
			if second.Generation != 2 || e.calls.Load() != 2 {
				t.Fatalf("%s after issue: %v (%d server calls), want generation 2 from the server", tc.refillAt, second, e.calls.Load())
			}
			if left := second.Expiry.Sub(e.clock.now()); left < accessLifetime-time.Minute {
				t.Fatalf("new token has %s left", left)
			}
			if tok := mustToken(t, c, "acme"); tok != second || e.calls.Load() != 2 {
				t.Fatalf("the refreshed token is not cached: %v, %d calls", tok, e.calls.Load())
			}
		})
	}
}

// The server says when a token must stop being used (use_until), which can
// come before the Client's own refresh margin: past it another replica may
// rotate the credential at a provider that kills the previous access
// token. The Client serves its cached token up to use_until, never after.
func TestCachedTokenStopsAtUseUntil(t *testing.T) {
	// The broker's use_until is 2m30s before expiry (its expiry delta,
	// capped at a quarter of the 10-minute tokens); the Client's own
	// margin is 1s, so only use_until can stop the cache in between.
	e := newEnv(t, option.WithExpiryDelta(5*time.Minute))
	if err := e.install(ctxT(t), "acme"); err != nil {
		t.Fatal(err)
	}
	c := e.watchingClient(t, client.WithRefreshMargin(time.Second))
	first := mustToken(t, c, "acme")
	if first.UseUntil.IsZero() || !first.UseUntil.Before(first.Expiry.Add(-time.Minute)) {
		t.Fatalf("the server's use_until %s is not well before the expiry %s: the test proves nothing", first.UseUntil, first.Expiry)
	}
	e.clock.advance(first.UseUntil.Add(-time.Second).Sub(e.clock.now()))
	if tok := mustToken(t, c, "acme"); tok != first || e.calls.Load() != 1 {
		t.Fatalf("a second before use_until: %v (%d server calls), want the cached %v", tok, e.calls.Load(), first)
	}
	e.clock.advance(time.Second + time.Millisecond)
	second := mustToken(t, c, "acme")
	if second.Fingerprint == first.Fingerprint || e.calls.Load() != 2 {
		t.Fatalf("past use_until: %v (%d server calls), want a new token from the server", second, e.calls.Load())
	}
	if !e.clock.now().Before(second.UseUntil) {
		t.Fatalf("the new token's use_until %s has passed", second.UseUntil)
	}
	if tok := mustToken(t, c, "acme"); tok != second || e.calls.Load() != 2 {
		t.Fatalf("the new token is not cached: %v, %d calls", tok, e.calls.Load())
	}
}

// A Client with nothing cached does not hand out the server's token when it
// is within the refresh margin: it asks for one outside it.
func TestFirstTokenIsOutsideTheMargin(t *testing.T) {
	e := newEnv(t)
	if err := e.install(ctxT(t), "acme"); err != nil {
		t.Fatal(err)
	}
	imported := mustToken(t, e.newClient(t, client.WithoutRevocationWatch()), "acme")
	// The server's token has 30s left: unexpired, so the server hands it
	// out to whoever asks for no particular lifetime.
	e.clock.advance(imported.Expiry.Add(-30 * time.Second).Sub(e.clock.now()))
	c := e.watchingClient(t)
	tok := mustToken(t, c, "acme")
	if left := tok.Expiry.Sub(e.clock.now()); left <= client.DefaultRefreshMargin || tok.Generation != 2 {
		t.Fatalf("a fresh Client's first token: %v with %s left, want generation 2 with more than the %s margin", tok, left, client.DefaultRefreshMargin)
	}
	calls := e.calls.Load()
	if again := mustToken(t, c, "acme"); again != tok || e.calls.Load() != calls {
		t.Fatalf("second call: %v (%d server calls, was %d), want the cached %v", again, e.calls.Load(), calls, tok)
	}
}

func TestReauthenticationRequiredIsTyped(t *testing.T) {
	e := newEnv(t)
	if err := e.install(ctxT(t), "acme"); err != nil {
		t.Fatal(err)
	}
	c := e.newClient(t)
	if err := e.revoke(ctxT(t), "acme"); err != nil {
		t.Fatal(err)
	}
	_, err := c.Token(ctxT(t), "acme")
	var reauth *client.ReauthenticationRequiredError
	if !errors.As(err, &reauth) || reauth.CredentialID != "acme" {
		t.Fatalf("Token after revocation: %v, want *ReauthenticationRequiredError for acme", err)
	}
	if !errors.Is(err, client.ErrReauthenticationRequired) || status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("%v: errors.Is ErrReauthenticationRequired %v, code %s", err, errors.Is(err, client.ErrReauthenticationRequired), status.Code(err))
	}
	if got := e.calls.Load(); got != 1 {
		t.Fatalf("%d server calls: REAUTHENTICATION_REQUIRED must not be retried", got)
	}

	_, err = c.Token(ctxT(t), "nobody")
	if status.Code(err) != codes.NotFound || errors.Is(err, client.ErrReauthenticationRequired) {
		t.Fatalf("unknown credential: %v, want NOT_FOUND", err)
	}
}

// The server answers UNAVAILABLE with RetryInfo (1s) when the provider is
// down; the Client waits that long and tries again, within the caller's
// deadline and its attempts.
func TestUnavailableIsRetried(t *testing.T) {
	for _, tc := range []struct {
		name        string
		opts        []client.Option
		timeout     time.Duration
		wantCalls   int64
		wantCode    codes.Code // OK: a token of generation 2
		minDuration time.Duration
		maxDuration time.Duration
	}{
		{name: "retried after RetryInfo", timeout: awaitDeadline, wantCalls: 2, wantCode: codes.OK, minDuration: time.Second, maxDuration: awaitDeadline},
		// The server's error at once, not the deadline's after waiting.
		{name: "deadline shorter than RetryInfo", timeout: 900 * time.Millisecond, wantCalls: 1, wantCode: codes.Unavailable, maxDuration: 900 * time.Millisecond},
		{name: "one attempt", opts: []client.Option{client.WithMaxAttempts(1)}, timeout: awaitDeadline, wantCalls: 1, wantCode: codes.Unavailable, maxDuration: awaitDeadline},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			if err := e.install(ctxT(t), "acme"); err != nil {
				t.Fatal(err)
			}
			c := e.newClient(t, tc.opts...)
			e.expire()
			// The server tries the provider 4 times per call: the first
			// call fails, a second would succeed.
			e.sim.InjectFailure(providersim.FailUnavailable, 4)
			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			start := time.Now()
			tok, err := c.Token(ctx, "acme")
			took := time.Since(start)
			if status.Code(err) != tc.wantCode || (err == nil && tok.Generation != 2) {
				t.Fatalf("Token: %v, %v; want code %s", tok, err, tc.wantCode)
			}
			if err != nil && errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Token: %v; want the server's UNAVAILABLE, not the deadline", err)
			}
			if got := e.calls.Load(); got != tc.wantCalls {
				t.Fatalf("%d server calls, want %d", got, tc.wantCalls)
			}
			if took < tc.minDuration || took > tc.maxDuration {
				t.Fatalf("took %s, want between %s and %s", took, tc.minDuration, tc.maxDuration)
			}
		})
	}
}

// A token printed or logged by mistake does not leak.
func TestTokenDoesNotPrintItsValue(t *testing.T) {
	e := newEnv(t)
	if err := e.install(ctxT(t), "acme"); err != nil {
		t.Fatal(err)
	}
	tok := mustToken(t, e.newClient(t), "acme")
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("got", "token", tok)
	for _, out := range []string{
		fmt.Sprint(tok), fmt.Sprintf("%+v", tok), fmt.Sprintf("%#v", tok), fmt.Sprintf("token %s", tok),
		fmt.Sprintf("%+v", struct{ T client.Token }{tok}), logged.String(),
	} {
		if strings.Contains(out, tok.AccessToken) || !strings.Contains(out, tok.Fingerprint) {
			t.Fatalf("printed as %q: it must name the fingerprint, never the token", out)
		}
	}
}

func TestCloseStopsTheWatch(t *testing.T) {
	e := newEnv(t)
	c, err := client.New(e.conn)
	if err != nil {
		t.Fatal(err)
	}
	await(t, "the watch to reach the server", func() bool { return e.subscribers() == 1 })
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	await(t, "the server to see the watch end", func() bool { return e.subscribers() == 0 })
	if _, err := c.Token(ctxT(t), "acme"); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Token after Close: %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestNewRejectsInvalidOptions(t *testing.T) {
	e := newEnv(t)
	for name, opt := range map[string]client.Option{
		"negative margin":           client.WithRefreshMargin(-time.Second),
		"zero attempts":             client.WithMaxAttempts(0),
		"backoff longest < first":   client.WithBackoff(time.Second, time.Millisecond),
		"nil notice handler":        client.WithNoticeHandler(nil),
		"backoff longer than 5 min": client.WithBackoff(time.Second, time.Hour),
	} {
		if c, err := client.New(e.conn, opt); err == nil {
			_ = c.Close()
			t.Errorf("%s: New succeeded", name)
		}
	}
	if _, err := client.New(e.conn, client.WithoutRevocationWatch(), client.WithNoticeHandler(func(*rotavaultv1.Notice) {})); err == nil {
		t.Error("a notice handler without the watch was accepted")
	}
}
