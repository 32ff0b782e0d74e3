package server

import (
	"io"
	"log/slog"
	"net"
	"testing"
)

// addrConn is one end of a pipe that says it comes from addr.
type addrConn struct {
	net.Conn
	addr net.Addr
}

func (c addrConn) RemoteAddr() net.Addr { return c.addr }

// fixedListener hands out one connection per address, then io.EOF.
type fixedListener struct {
	net.Listener
	conns []net.Conn
}

func (l *fixedListener) Accept() (net.Conn, error) {
	if len(l.conns) == 0 {
		return nil, io.EOF
	}
	c := l.conns[0]
	l.conns = l.conns[1:]
	return c, nil
}

// One IPv6 host routinely holds a /64: spreading connections over its
// addresses must not multiply its per-host share (the OAuth callback's
// limiter counts the same unit). An IPv4-mapped address is its IPv4 host.
func TestPerHostConnectionLimitCountsAnIPv6SlashSixtyFourAsOneHost(t *testing.T) {
	from := []string{"2001:db8::1", "2001:db8::2", "2001:db8::ffff:1", "2001:db8:0:1::1", "127.0.0.1", "::ffff:127.0.0.1"}
	var conns []net.Conn
	for _, ip := range from {
		c, peer := net.Pipe()
		t.Cleanup(func() { _ = c.Close(); _ = peer.Close() })
		conns = append(conns, addrConn{Conn: c, addr: &net.TCPAddr{IP: net.ParseIP(ip), Port: 4000}})
	}
	l := newLimitListener(&fixedListener{conns: conns}, ConnLimits{Total: 100, PerHost: 1}, newConnMetrics(nil),
		newRefusalLog(slog.New(slog.DiscardHandler)))
	var admitted []string
	for {
		c, err := l.Accept()
		if err != nil {
			break
		}
		admitted = append(admitted, c.RemoteAddr().String())
	}
	want := []string{"[2001:db8::1]:4000", "[2001:db8:0:1::1]:4000", "127.0.0.1:4000"}
	if len(admitted) != len(want) {
		t.Fatalf("admitted %v, want one connection per /64 or IPv4 host: %v", admitted, want)
	}
	for i := range want {
		if admitted[i] != want[i] {
			t.Fatalf("admitted %v, want %v", admitted, want)
		}
	}
}
