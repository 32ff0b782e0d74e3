package server

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store/memstore"
)

// callbackServer serves the callback on 127.0.0.1 in front of a real broker
// with no flows, trusting proxies.
func callbackServer(t *testing.T, proxies ...netip.Prefix) *httptest.Server {
	t.Helper()
	b, err := broker.New(context.Background(), broker.Config{Store: memstore.New(), Provider: provider.New(nil), Auditor: &recordingAuditor{}},
		option.WithSchedulerInterval(time.Hour), option.WithIntrospectionInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	srv := httptest.NewServer(NewHTTPMux(HTTPConfig{Callback: b.Flows(), TrustedProxies: proxies}))
	t.Cleanup(srv.Close)
	return srv
}

// callbackFrom sends n callbacks with state from localIP, with the
// X-Forwarded-For header if set, and counts the answers by status.
func callbackFrom(t *testing.T, srv *httptest.Server, localIP net.IP, forwardedFor, state string, n int) map[int]int {
	t.Helper()
	tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: localIP}}).DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr}
	statuses := map[int]int{}
	for range n {
		req, err := http.NewRequest(http.MethodGet, srv.URL+CallbackPath+"?code=c&state="+state, nil)
		if err != nil {
			t.Fatal(err)
		}
		if forwardedFor != "" {
			req.Header.Set("X-Forwarded-For", forwardedFor)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		statuses[resp.StatusCode]++
	}
	return statuses
}

var (
	wellFormedState = strings.Repeat("A", 43) // never issued
	localhost       = net.IPv4(127, 0, 0, 1)
	otherLocalhost  = net.IPv4(127, 0, 0, 2)
)

// Garbage states are answered before the limiter: any number of them
// leaves a browser's real callback (from the same address, even) unlimited.
func TestMalformedCallbacksDoNotSpendTheLimit(t *testing.T) {
	srv := callbackServer(t)
	if got := callbackFrom(t, srv, localhost, "", "garbage", 300); got[http.StatusBadRequest] != 300 {
		t.Fatalf("300 malformed states: %v; want 300 × 400", got)
	}
	if got := callbackFrom(t, srv, localhost, "", wellFormedState, 1); got[http.StatusBadRequest] != 1 {
		t.Fatalf("a well-formed state after the garbage: %v; want it past the limiter (400 unknown state)", got)
	}
}

// One source guessing well-formed states is limited alone: another
// source's browser still completes.
func TestCallbackLimitIsPerSource(t *testing.T) {
	srv := callbackServer(t)
	if got := callbackFrom(t, srv, localhost, "", wellFormedState, 100); got[http.StatusTooManyRequests] == 0 {
		t.Fatalf("100 guesses from one source: %v; want some refused with 429", got)
	}
	if got := callbackFrom(t, srv, otherLocalhost, "", wellFormedState, 1); got[http.StatusBadRequest] != 1 {
		t.Fatalf("another source's callback: %v; want it past the limiter", got)
	}
}

// Behind a trusted proxy the source is the forwarded address; from any
// other peer X-Forwarded-For is ignored, so a client cannot escape its
// limit by writing one.
func TestCallbackSourceBehindATrustedProxy(t *testing.T) {
	proxy := netip.MustParsePrefix("127.0.0.1/32")
	srv := callbackServer(t, proxy)
	if got := callbackFrom(t, srv, localhost, "198.51.100.7", wellFormedState, 100); got[http.StatusTooManyRequests] == 0 {
		t.Fatalf("100 guesses forwarded for one client: %v; want some refused", got)
	}
	if got := callbackFrom(t, srv, localhost, "198.51.100.8", wellFormedState, 1); got[http.StatusBadRequest] != 1 {
		t.Fatalf("another client through the same proxy: %v; want it past the limiter", got)
	}
	// 127.0.0.2 is no proxy: its forwarded addresses are its own words.
	spoofed := 0
	for i := range 100 {
		got := callbackFrom(t, srv, otherLocalhost, netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}).String(), wellFormedState, 1)
		spoofed += got[http.StatusTooManyRequests]
	}
	if spoofed == 0 {
		t.Fatal("a direct client escaped its limit by writing X-Forwarded-For")
	}

	h := newCallbackHandler(nil, []netip.Prefix{proxy, netip.MustParsePrefix("10.0.0.0/8")}, nil)
	for _, tt := range []struct {
		peer, xff, want string
	}{
		{"127.0.0.1:5000", "198.51.100.7", "198.51.100.7"},
		{"127.0.0.1:5000", "203.0.113.1, 198.51.100.7, 10.1.2.3", "198.51.100.7"}, // the client's own entry is not believed
		{"127.0.0.1:5000", "", "127.0.0.1"},
		{"127.0.0.1:5000", "not-an-address", "127.0.0.1"},
		{"192.0.2.9:5000", "198.51.100.7", "192.0.2.9"},
		{"[2001:db8:1:2:3:4:5:6]:5000", "", "2001:db8:1:2::/64"},
		// Proxies that record the client's port or bracket IPv6: the
		// address is still the source, whatever port the client chose.
		{"127.0.0.1:5000", "203.0.113.5:4711", "203.0.113.5"},
		{"127.0.0.1:5000", "203.0.113.5:4712", "203.0.113.5"},
		{"127.0.0.1:5000", "[2001:db8::1]:443", "2001:db8::/64"},
		{"127.0.0.1:5000", "[2001:db8::1]", "2001:db8::/64"},
		{"127.0.0.1:5000", "198.51.100.7:80, 10.1.2.3:8080", "198.51.100.7"},
		{"127.0.0.1:5000", "[198.51.100.7]", "127.0.0.1"}, // brackets are for IPv6 only
		{"127.0.0.1:5000", "[::ffff:198.51.100.7]:80", "198.51.100.7"},
	} {
		r := httptest.NewRequest(http.MethodGet, CallbackPath, nil)
		r.RemoteAddr = tt.peer
		if tt.xff != "" {
			r.Header.Set("X-Forwarded-For", tt.xff)
		}
		if got := h.source(r); got != tt.want {
			t.Errorf("peer %s, X-Forwarded-For %q: source %q, want %q", tt.peer, tt.xff, got, tt.want)
		}
	}
}
