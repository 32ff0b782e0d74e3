package node_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/rotavault/rotavault/internal/node"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/server"
)

// Anyone who reaches the HTTP endpoints (the OAuth callback must be
// reachable by browsers) could otherwise hold every file descriptor of the
// process with idle keep-alive connections, and the gRPC listener would
// then accept no consumer at all (seen against `serve`: 19,813 held
// connections, and `token get` hung).
func TestHTTPEndpointsCloseConnectionsBeyondTheirBound(t *testing.T) {
	n := node.New(node.Config{})
	t.Cleanup(func() { _ = n.Close(context.Background()) })
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.ServeHTTP("HTTP endpoints", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}), lis)
	addr := lis.Addr().String()

	// Every connection comes from 127.0.0.1: the per-source bound is the
	// one reached.
	held := make([]net.Conn, 0, server.MaxHTTPConnectionsPerHost)
	t.Cleanup(func() {
		for _, c := range held {
			_ = c.Close()
		}
	})
	for range server.MaxHTTPConnectionsPerHost {
		c, err := served(addr)
		if err != nil {
			t.Fatalf("connection %d within the bound: %v", len(held)+1, err)
		}
		held = append(held, c)
	}
	if c, err := served(addr); err == nil {
		_ = c.Close()
		t.Fatalf("connection %d from one source was served; want it closed at once", server.MaxHTTPConnectionsPerHost+1)
	}

	// A connection that ends gives its place back.
	_ = held[0].Close()
	held = held[1:]
	poll.Until(t, 5*time.Second, "a new connection served once one closed", func() bool {
		c, err := served(addr)
		if err != nil {
			return false
		}
		held = append(held, c)
		return true
	})
}

// served opens a connection, sends one keep-alive request on it and reads
// the answer's status line: the connection stays open, idle, as a client
// holding it would leave it.
func served(addr string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprint(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		_ = c.Close()
		return nil, err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	if line != "HTTP/1.1 200 OK\r\n" {
		_ = c.Close()
		return nil, errors.New("answered " + line)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}
