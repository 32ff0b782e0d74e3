package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/rotavault/rotavault/broker/authflow"
	"github.com/rotavault/rotavault/broker/brokererr"
)

// CallbackPath is the server's own OAuth redirect endpoint: a provider
// app's redirect URI is <public URL>/oauth/callback.
const CallbackPath = "/oauth/callback"

// callbackTimeout bounds the work of one callback: a code exchange (the
// provider client's own timeout is 30 s) and the store writes around it.
const callbackTimeout = 60 * time.Second

// CallbackBroker is what the callback endpoint needs of the authorization
// flows; *authflow.Flows (broker.Broker.Flows) is one.
type CallbackBroker interface {
	CompleteCallback(ctx context.Context, cb authflow.Callback) (authflow.Activation, error)
}

// HTTPConfig holds the HTTP endpoints' dependencies.
type HTTPConfig struct {
	Callback CallbackBroker
	Logger   *slog.Logger // nil: discard
	// Ready, when set, answers /readyz: nil means this replica can serve
	// (its store is reachable). /healthz (liveness) answers 200 whenever
	// the process serves HTTP.
	Ready func() error
	// Metrics, when set, is served at /metrics.
	Metrics http.Handler
	// TrustedProxies are the reverse proxies in front of the endpoints
	// whose X-Forwarded-For the callback believes when it limits requests
	// per source; requests from any other peer are limited by the peer's
	// own address.
	TrustedProxies []netip.Prefix
}

// NewHTTPMux returns the server's plain-HTTP endpoints, for browsers and
// infrastructure rather than gRPC clients: GET /oauth/callback, /healthz
// and, when configured, /readyz and /metrics. The callback needs no authentication: the flow's
// state is the capability, single use and expiring, and PKCE makes a code
// seen in transit useless without the verifier only the store holds.
func NewHTTPMux(cfg HTTPConfig) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle(CallbackPath, newCallbackHandler(cfg.Callback, cfg.TrustedProxies, loggerOrDiscard(cfg.Logger)))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		plain(w, http.StatusOK, "ok")
	})
	if cfg.Ready != nil {
		mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
			if err := cfg.Ready(); err != nil {
				plain(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
				return
			}
			plain(w, http.StatusOK, "ready")
		})
	}
	if cfg.Metrics != nil {
		mux.Handle("GET /metrics", cfg.Metrics)
	}
	return mux
}

func plain(w http.ResponseWriter, status int, text string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, text+"\n")
}

// NewHTTPServer returns an http.Server for h with timeouts that keep slow
// or idle clients from holding connections (the callback waits for a code
// exchange, so writes get callbackTimeout and more).
func NewHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      callbackTimeout + 15*time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(loggerOrDiscard(log).Handler(), slog.LevelDebug),
	}
}

type callbackHandler struct {
	broker  CallbackBroker
	log     *slog.Logger
	proxies []netip.Prefix

	// Every well-formed state costs a store read (Vault's, shared with
	// every rotation), and a browser finishing a reauthentication sends
	// one request. perSource keeps one source's guesses from shutting out
	// the others' browsers; all bounds what reaches the store whoever
	// sends it. Malformed states are answered before either.
	perSource *callerLimiter
	all       *rate.Limiter
	// refusals logs malformed and rate-limited requests, sampled: anyone
	// can send them as fast as the server answers.
	refusals *refusalLog
}

// Callback limits: per source (a peer address, an IPv6 /64), and for the
// replica as a whole.
const (
	callbackSourceRate  = 10 // per second
	callbackSourceBurst = 20
	callbackRate        = 100
	callbackBurst       = 200
)

func newCallbackHandler(b CallbackBroker, proxies []netip.Prefix, log *slog.Logger) *callbackHandler {
	log = loggerOrDiscard(log)
	return &callbackHandler{
		broker: b, log: log, proxies: proxies,
		perSource: newCallerLimiter(RateLimit{Rate: callbackSourceRate, Burst: callbackSourceBurst}, nil, newRefusalLog(log)),
		all:       rate.NewLimiter(callbackRate, callbackBurst),
		refusals:  newRefusalLog(log),
	}
}

// allow takes a token for r's source, then one from the replica's bucket.
func (h *callbackHandler) allow(r *http.Request) bool {
	if ok, _ := h.perSource.allowKey(h.source(r)); !ok {
		return false
	}
	return h.all.Allow()
}

// source is the address a request comes from: the peer's, or for a peer
// that is a trusted proxy, the last address in X-Forwarded-For that is not
// one (earlier entries are the client's to write). IPv6 addresses count
// by /64, what one host usually holds.
func (h *callbackHandler) source(r *http.Request) string {
	addr := remoteAddr(r.RemoteAddr)
	if h.trusted(addr) {
		hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
		for i := len(hops) - 1; i >= 0; i-- {
			a, err := forwardedAddr(hops[i])
			if err != nil {
				break // what follows is not a proxy's record: stop at the proxy
			}
			addr = a.Unmap()
			if !h.trusted(addr) {
				break
			}
		}
	}
	return sourceKey(addr)
}

// sourceKey is the unit that per-source limits count: an IPv4 address, or
// an IPv6 /64 (what one host or one customer routinely holds, so spreading
// over its addresses gains nothing). Zones are dropped.
func sourceKey(addr netip.Addr) string {
	addr = addr.Unmap().WithZone("")
	if addr.Is6() {
		p, _ := addr.Prefix(64)
		return p.String()
	}
	return addr.String()
}

func (h *callbackHandler) trusted(a netip.Addr) bool {
	for _, p := range h.proxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// forwardedAddr parses one X-Forwarded-For entry. Proxies write the address
// alone ("203.0.113.5"), with the port they saw ("203.0.113.5:4711",
// "[2001:db8::1]:443") or IPv6 in brackets without one ("[2001:db8::1]");
// each is the same client, and counting the forms apart would let one
// client multiply its per-source allowance by varying its source port.
func forwardedAddr(entry string) (netip.Addr, error) {
	entry = strings.TrimSpace(entry)
	if a, err := netip.ParseAddr(entry); err == nil {
		return a, nil
	}
	if ap, err := netip.ParseAddrPort(entry); err == nil {
		return ap.Addr(), nil
	}
	if inner, ok := strings.CutPrefix(entry, "["); ok {
		if inner, ok := strings.CutSuffix(inner, "]"); ok {
			if a, err := netip.ParseAddr(inner); err == nil && a.Is6() {
				return a, nil
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("server: X-Forwarded-For entry %q is no address", entry)
}

func remoteAddr(hostport string) netip.Addr {
	if ap, err := netip.ParseAddrPort(hostport); err == nil {
		return ap.Addr().Unmap()
	}
	a, _ := netip.ParseAddr(hostport)
	return a.Unmap()
}

// ParseTrustedProxies parses addresses and CIDR prefixes (10.0.0.7,
// 10.0.0.0/8, fd00::/8).
func ParseTrustedProxies(specs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range specs {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("trusted proxy %q: not an address or CIDR prefix", s)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// page is a fixed answer: nothing of the request is ever reflected in it.
type page struct {
	status  int
	outcome string // for the log
	title   string
	body    string
}

var (
	pageDone = page{http.StatusOK, "completed", "Authorization complete",
		"Rotavault installed the new token family. You can close this window."}
	pageDenied = page{http.StatusOK, "denied", "Authorization declined",
		"The authorization was declined at the provider, and nothing changed. Ask the operator to start a new one if this was a mistake."}
	pageUnknown = page{http.StatusBadRequest, "unknown_state", "Link unknown, expired or used",
		"This authorization link is unknown, has expired or was already used; nothing changed. Ask the operator to start a new one."}
	pageRefused = page{http.StatusBadRequest, "refused", "Authorization failed",
		"The authorization could not be completed, and nothing changed. The operator can see why (rotavault reauth) and start again."}
	pageProviderDown = page{http.StatusBadGateway, "provider_unavailable", "Provider unavailable",
		"The provider could not be reached to finish the authorization. Reload this page to try again."}
	pageStoreDown = page{http.StatusServiceUnavailable, "store_unavailable", "Temporarily unavailable",
		"Rotavault cannot reach its store right now. Reload this page to try again."}
	pageMethod = page{http.StatusMethodNotAllowed, "bad_method", "Method not allowed",
		"This address only answers the provider's redirect."}
	pageInternal = page{http.StatusInternalServerError, "internal_error", "Internal error",
		"Rotavault could not finish the authorization. The operator can find the cause in the server's log."}
	pageBusy = page{http.StatusTooManyRequests, "rate_limited", "Too many requests",
		"Rotavault is receiving too many authorization redirects right now. Reload this page in a moment."}
)

func (h *callbackHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		// HEAD included: a link previewer must not spend the code.
		w.Header().Set("Allow", http.MethodGet)
		h.write(w, r, pageMethod)
		return
	}
	q := r.URL.Query()
	cb := authflow.Callback{State: q.Get("state"), Code: q.Get("code"), Error: q.Get("error")}
	if !authflow.IsFlowState(cb.State) {
		// No store read, no limiter token: garbage costs nobody else a
		// reauthentication.
		h.render(w, pageUnknown)
		h.refusals.refuse(r.Context(), refusedCallbackMalformed, "oauth callback: malformed state", "status", pageUnknown.status)
		return
	}
	if !h.allow(r) {
		w.Header().Set("Retry-After", "1")
		h.render(w, pageBusy)
		h.refusals.refuse(r.Context(), refusedCallbackRate, "oauth callback: rate limited", "status", pageBusy.status, "source", h.source(r))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), callbackTimeout)
	defer cancel()
	_, err := h.broker.CompleteCallback(ctx, cb)
	h.write(w, r, h.pageFor(ctx, err))
}

func (h *callbackHandler) pageFor(ctx context.Context, err error) page {
	var (
		inv   *brokererr.InvalidArgumentError
		authz *authflow.AuthorizationError
		unav  *brokererr.UnavailableError
	)
	switch {
	case err == nil:
		return pageDone
	case errors.As(err, &inv) && inv.Field == "state":
		return pageUnknown
	case errors.As(err, &authz) && authz.Reason == authflow.FlowDenied:
		return pageDenied
	case errors.As(err, &inv), errors.As(err, &authz), errors.Is(err, brokererr.ErrNotFound):
		return pageRefused
	case errors.As(err, &unav):
		h.log.WarnContext(ctx, "oauth callback: dependency unavailable", "component", unav.Component, "err", unav.Err)
		if unav.Component == brokererr.ComponentStore {
			return pageStoreDown
		}
		return pageProviderDown
	default:
		h.log.ErrorContext(ctx, "oauth callback failed", "err", err)
		return pageInternal
	}
}

// write sends a fixed page and logs its outcome.
func (h *callbackHandler) write(w http.ResponseWriter, r *http.Request, p page) {
	h.render(w, p)
	h.log.InfoContext(r.Context(), "oauth callback", "outcome", p.outcome, "status", p.status)
}

// render sends a fixed page with headers that keep it out of caches,
// frames, MIME sniffing and Referer headers (the URL held a code).
func (h *callbackHandler) render(w http.ResponseWriter, p page) {
	hd := w.Header()
	hd.Set("Content-Type", "text/html; charset=utf-8")
	hd.Set("Cache-Control", "no-store")
	hd.Set("Pragma", "no-cache")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Content-Security-Policy", "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	w.WriteHeader(p.status)
	_, _ = w.Write([]byte(`<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>` + p.title +
		`</title></head><body><h1>` + p.title + `</h1><p>` + p.body + `</p></body></html>`))
}
