package server

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// ConnLimits bounds the connections Server.Serve holds open: in total, and
// per source host (the peer's IP address). Each costs a goroutine and about
// 70 KiB of buffers before it has sent a byte, so someone who is allowed
// nothing could otherwise exhaust memory or file descriptors by opening
// them. Behind a load balancer or NAT that makes every caller come from one
// address, raise PerHost to Total.
type ConnLimits struct {
	Total   int // 0: DefaultMaxConnections; negative: no limit
	PerHost int // 0: DefaultMaxConnectionsPerHost; negative: no limit
}

// Connection defaults: high enough for fleets (a Go client holds one
// connection per process), low enough that 10,000 idle connections fit in
// well under a GiB.
const (
	DefaultMaxConnections        = 10_000
	DefaultMaxConnectionsPerHost = 2_000
)

// Bounds of the HTTP endpoints' connections (the OAuth callback, /metrics,
// /healthz, /readyz): browsers finishing a login, a few scrapers and
// probes need tens. Without a bound, anyone who reaches the port could hold
// every file descriptor of the process with idle keep-alive connections,
// and the gRPC listener could then accept no one.
const (
	MaxHTTPConnections        = 1_000
	MaxHTTPConnectionsPerHost = 250
)

// LimitHTTPListener bounds the connections lis hands to the HTTP endpoints'
// server: beyond MaxHTTPConnections open, or MaxHTTPConnectionsPerHost from
// one source, a new one is closed as soon as accepted (logged sampled).
func LimitHTTPListener(lis net.Listener, log *slog.Logger) net.Listener {
	return newLimitListener(lis, ConnLimits{Total: MaxHTTPConnections, PerHost: MaxHTTPConnectionsPerHost},
		newConnMetrics(nil), newRefusalLog(loggerOrDiscard(log).With("listener", "http")))
}

func (l ConnLimits) withDefaults() ConnLimits {
	if l.Total == 0 {
		l.Total = DefaultMaxConnections
	}
	if l.PerHost == 0 {
		l.PerHost = DefaultMaxConnectionsPerHost
	}
	return l
}

// connMetrics are the listener's instruments.
type connMetrics struct {
	refused *prometheus.CounterVec
	open    prometheus.Gauge
}

func newConnMetrics(reg prometheus.Registerer) connMetrics {
	m := connMetrics{
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "rotavault", Subsystem: "grpc", Name: "connections_refused_total",
			Help: "Connections closed as soon as accepted because the server (reason connection_limit) or their source host (connection_limit_per_host) had as many open as allowed.",
		}, []string{"reason"}),
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "rotavault", Subsystem: "grpc", Name: "connections_open",
			Help: "Connections the gRPC listener holds open.",
		}),
	}
	for _, r := range []string{refusedConnections, refusedConnectionsByHost} {
		m.refused.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.refused, m.open)
	}
	return m
}

// limitListener closes, as soon as it is accepted, a connection beyond the
// limits; the caller's listener loop (grpc.Server.Serve) never sees it.
// Safe for concurrent use.
type limitListener struct {
	net.Listener
	limits   ConnLimits
	metrics  connMetrics
	refusals *refusalLog

	mu      sync.Mutex
	total   int
	perHost map[string]int
}

func newLimitListener(lis net.Listener, limits ConnLimits, m connMetrics, refusals *refusalLog) *limitListener {
	return &limitListener{Listener: lis, limits: limits.withDefaults(), metrics: m, refusals: refusals, perHost: make(map[string]int)}
}

// Accept returns the next connection within the limits. Refused ones are
// closed here, counted and logged (sampled), and never returned, so the
// server's accept loop neither stops nor backs off because of them.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		host := hostOf(c.RemoteAddr())
		if reason := l.admit(host); reason != "" {
			// Counted before the close: whoever sees the connection closed
			// finds it counted.
			l.metrics.refused.WithLabelValues(reason).Inc()
			_ = c.Close()
			l.refusals.refuse(context.Background(), reason, "connection refused: limit reached", "peer.address", host,
				"limit_total", l.limits.Total, "limit_per_host", l.limits.PerHost)
			continue
		}
		l.metrics.open.Inc()
		return &limitedConn{Conn: c, release: func() { l.release(host) }}, nil
	}
}

// admit counts a new connection from host, or says which limit refuses it.
func (l *limitListener) admit(host string) (refusedBy string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.limits.Total >= 0 && l.total >= l.limits.Total:
		return refusedConnections
	case l.limits.PerHost >= 0 && l.perHost[host] >= l.limits.PerHost:
		return refusedConnectionsByHost
	}
	l.total++
	l.perHost[host]++
	return ""
}

func (l *limitListener) release(host string) {
	l.mu.Lock()
	l.total--
	if l.perHost[host]--; l.perHost[host] <= 0 {
		delete(l.perHost, host)
	}
	l.mu.Unlock()
	l.metrics.open.Dec()
}

// hostOf is where a connection comes from, the unit of the per-host limit:
// its address without the port, an IPv6 address as its /64 (sourceKey).
func hostOf(a net.Addr) string {
	if tcp, ok := a.(*net.TCPAddr); ok {
		if addr, ok := netip.AddrFromSlice(tcp.IP); ok {
			return sourceKey(addr)
		}
		return tcp.IP.String()
	}
	if a == nil {
		return ""
	}
	if host, _, err := net.SplitHostPort(a.String()); err == nil {
		return host
	}
	return a.String()
}

// limitedConn gives its slot back once, on the first Close.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
