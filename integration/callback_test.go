package integration

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/rotavault/rotavault/broker/option"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/server"
)

// callbackListener reserves the loopback address of a server callback, so
// brokers can be told its URL before the replica serving it starts.
func callbackListener(t *testing.T) (net.Listener, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis, "http://" + lis.Addr().String() + server.CallbackPath
}

// withCallback configures brokers with the server's own callback URL.
func withCallback(o envOptions, callbackURL string) envOptions {
	o.brokerOpts = append(o.brokerOpts, option.WithCallbackURL(callbackURL))
	return o
}

// serveCallback serves this replica's HTTP endpoints on lis until the test
// ends; its log lines join the scenario's, for the leak check.
func (e *env) serveCallback(lis net.Listener) {
	logger := slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	hs := server.NewHTTPServer(server.NewHTTPMux(server.HTTPConfig{Callback: e.broker.Flows(), Logger: logger}), logger)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = hs.Serve(lis)
	}()
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(ctx)
		<-done
	})
}

// registerCallback lets the simulator's app redirect to the server's
// callback too.
func (e *env) registerCallback(callbackURL string) {
	e.sim.AddClient(providersim.Client{ID: simClientID, Secret: simClientSecret, RedirectURIs: []string{callbackURI, callbackURL}, RequirePKCE: true})
}

// browser follows no redirect on its own: the test sees each hop.
func browser() *http.Client {
	return &http.Client{
		Timeout:       awaitDeadline,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

type page struct {
	status int
	header http.Header
	body   string
}

func get(t *testing.T, rawURL string) page {
	t.Helper()
	resp, err := browser().Get(rawURL)
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return page{status: resp.StatusCode, header: resp.Header, body: string(body)}
}

// authorize plays the user's browser at the provider: it opens the
// authorize URL (the simulator approves at once) and returns where the
// provider redirects, the server's callback with code and state.
func authorize(t *testing.T, authorizeURL string) string {
	t.Helper()
	p := get(t, authorizeURL)
	loc := p.header.Get("Location")
	if p.status != http.StatusFound || loc == "" {
		t.Fatalf("authorize answered %d (%s), want a redirect", p.status, p.body)
	}
	return loc
}

func (e *env) startCallbackFlow(id string) *rotavaultv1.AuthorizationPending {
	e.t.Helper()
	resp, err := e.reauth(ctxT(e.t), id, &rotavaultv1.AuthorizationCodeStart{})
	if err != nil {
		e.t.Fatalf("start %s: %v", id, err)
	}
	e.checkResponseClean(resp)
	return resp.GetAuthorizationPending()
}

// wantPage checks a callback answer: its status, fixed text, and headers
// that keep the page out of caches, frames and Referer headers, with no
// part of the request reflected.
func wantPage(t *testing.T, p page, status int, text string, reflected ...string) {
	t.Helper()
	if p.status != status || !strings.Contains(p.body, text) {
		t.Fatalf("callback answered %d %q, want %d with %q", p.status, p.body, status, text)
	}
	for h, want := range map[string]string{
		"Content-Type":           "text/html; charset=utf-8",
		"Cache-Control":          "no-store",
		"X-Content-Type-Options": "nosniff",
		"Referrer-Policy":        "no-referrer",
	} {
		if got := p.header.Get(h); got != want {
			t.Errorf("%s: %q, want %q", h, got, want)
		}
	}
	if csp := p.header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("Content-Security-Policy %q is not strict", csp)
	}
	for _, r := range reflected {
		if r != "" && strings.Contains(p.body, r) {
			t.Errorf("the page reflects request input %q", r)
		}
	}
}

// The browser lands on another replica than the one that started the flow:
// the state alone finds the flow in the shared store, that replica completes
// it, and the starting replica reports it done. The state is single use.
func TestCallbackOnAnotherReplica(t *testing.T) {
	lis, cbURL := callbackListener(t)
	a := newEnv(t, withCallback(envOptions{vault: vaulttest.StartDev(t)}, cbURL))
	a.registerCallback(cbURL)
	b := a.replica()
	b.serveCallback(lis)
	a.createCredential("acme", a.salesforceSpec())
	stream, _ := b.watch(ctxT(t), "", "acme")

	p := a.startCallbackFlow("acme")
	if p.GetRedirectUri() != cbURL {
		t.Fatalf("redirect URI %q, want the server's callback %q", p.GetRedirectUri(), cbURL)
	}
	landing := authorize(t, p.GetAuthorizeUrl())
	if !strings.HasPrefix(landing, cbURL+"?") {
		t.Fatalf("the provider redirected to %q, not the server's callback", landing)
	}
	q, _ := url.Parse(landing)
	code := q.Query().Get("code")
	wantPage(t, get(t, landing), http.StatusOK, "Authorization complete", code, p.GetState())

	resp, err := a.check("acme", p.GetState(), 0)
	act := resp.GetFamilyActivated()
	if err != nil || act == nil {
		t.Fatalf("check on the starting replica: %v %v, want the activated family", resp, err)
	}
	if tok := a.token("acme"); tok.GetFamilyId() != act.GetFamilyId() {
		t.Fatalf("token on the starting replica of family %s, want %s", tok.GetFamilyId(), act.GetFamilyId())
	}
	if n := nextNotice(t, stream); n.GetKind() != rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_ACTIVATED || n.GetFamilyId() != act.GetFamilyId() {
		t.Fatalf("notice %v, want FAMILY_ACTIVATED for %s", n, act.GetFamilyId())
	}

	t.Run("a second callback changes nothing", func(t *testing.T) {
		exchanges := a.sim.Stats().CodeExchanges
		wantPage(t, get(t, landing), http.StatusBadRequest, "unknown, has expired or was already used", code)
		if tok := b.token("acme"); tok.GetFamilyId() != act.GetFamilyId() || tok.GetGeneration() != act.GetGeneration() {
			t.Fatalf("family %s/%d after a replayed callback, want %s/%d", tok.GetFamilyId(), tok.GetGeneration(), act.GetFamilyId(), act.GetGeneration())
		}
		if got := a.sim.Stats().CodeExchanges; got != exchanges {
			t.Fatalf("a replayed callback reached the provider (%d exchanges, was %d)", got, exchanges)
		}
	})
}

// The callback's answers on one node: expiry, denial, provider outage and
// retry, unknown or malformed state, other methods; and a flow that asks
// for a callback the server does not have.
func TestCallbackOutcomes(t *testing.T) {
	lis, cbURL := callbackListener(t)
	e := newEnv(t, withCallback(envOptions{}, cbURL))
	e.registerCallback(cbURL)
	e.serveCallback(lis)
	e.createCredential("acme", e.salesforceSpec())

	t.Run("expired state", func(t *testing.T) {
		p := e.startCallbackFlow("acme")
		landing := authorize(t, p.GetAuthorizeUrl())
		e.clock.advance(11 * time.Minute)
		wantPage(t, get(t, landing), http.StatusBadRequest, "has expired")
		_, err := e.check("acme", p.GetState(), 0)
		wantCode(t, err, codes.FailedPrecondition, server.ReasonAuthorizationExpired)
		_, err = e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
		wantCode(t, err, codes.FailedPrecondition, server.ReasonReauthenticationRequired)
	})

	t.Run("denied at the provider", func(t *testing.T) {
		p := e.startCallbackFlow("acme")
		denied := cbURL + "?" + url.Values{"state": {p.GetState()}, "error": {"access_denied"}, "error_description": {"<b>end-user denied</b>"}}.Encode()
		wantPage(t, get(t, denied), http.StatusOK, "declined", "<b>end-user denied</b>")
		_, err := e.check("acme", p.GetState(), 0)
		wantCode(t, err, codes.FailedPrecondition, server.ReasonAuthorizationDenied)
		// The flow is over: its state no longer completes anything.
		wantPage(t, get(t, denied), http.StatusBadRequest, "already used")
	})

	t.Run("provider down, then a reload", func(t *testing.T) {
		p := e.startCallbackFlow("acme")
		landing := authorize(t, p.GetAuthorizeUrl())
		e.sim.InjectFailure(providersim.FailUnavailable, 1)
		wantPage(t, get(t, landing), http.StatusBadGateway, "Reload this page")
		if resp, err := e.check("acme", p.GetState(), 0); err != nil || resp.GetAuthorizationPending() == nil {
			t.Fatalf("check after the outage: %v %v, want the flow still pending", resp, err)
		}
		wantPage(t, get(t, landing), http.StatusOK, "Authorization complete")
		act, err := e.awaitOutcome("acme", p.GetState())
		if err != nil || e.token("acme").GetFamilyId() != act.GetFamilyId() {
			t.Fatalf("after the reload: %v %v", act, err)
		}
	})

	t.Run("a link previewer's HEAD spends nothing", func(t *testing.T) {
		p := e.startCallbackFlow("acme")
		landing := authorize(t, p.GetAuthorizeUrl())
		resp, err := browser().Head(landing)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != http.MethodGet {
			t.Fatalf("HEAD answered %s (Allow %q), want 405 allowing GET", resp.Status, resp.Header.Get("Allow"))
		}
		wantPage(t, get(t, landing), http.StatusOK, "Authorization complete")
	})

	t.Run("unknown, malformed, wrong method", func(t *testing.T) {
		wantPage(t, get(t, cbURL+"?state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&code=x"), http.StatusBadRequest, "unknown")
		wantPage(t, get(t, cbURL+"?state=%3Cscript%3Ealert(1)%3C%2Fscript%3E&code=%3Cscript%3E"), http.StatusBadRequest, "unknown", "<script>")
		resp, err := http.Post(cbURL, "application/x-www-form-urlencoded", strings.NewReader("state=x&code=y"))
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Fatalf("POST answered %s, want 405", resp.Status)
		}
	})

	t.Run("no callback configured", func(t *testing.T) {
		other := newEnv(t, envOptions{})
		other.createCredential("acme", other.salesforceSpec())
		_, err := other.reauth(ctxT(t), "acme", &rotavaultv1.AuthorizationCodeStart{})
		wantCode(t, err, codes.FailedPrecondition, server.ReasonCallbackNotConfigured)
	})
}
