// Package syncbuf is a concurrency-safe buffer for tests that collect what
// servers and commands write (logs, output) and wait for it.
package syncbuf

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

// Buffer is a concurrency-safe writer that can be waited on. The zero value
// is ready to use.
type Buffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	written chan struct{} // signalled after each Write; made on first use
}

func (b *Buffer) signal() chan struct{} {
	if b.written == nil {
		b.written = make(chan struct{}, 1)
	}
	return b.written
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	n, err := b.buf.Write(p)
	written := b.signal()
	b.mu.Unlock()
	select {
	case written <- struct{}{}:
	default:
	}
	return n, err
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// WaitFor waits up to deadline until the buffer contains substr and returns
// its content; it fails t when the deadline passes first.
func (b *Buffer) WaitFor(t testing.TB, substr string, deadline time.Duration) string {
	t.Helper()
	b.mu.Lock()
	written := b.signal()
	b.mu.Unlock()
	timer := time.NewTimer(deadline)
	defer timer.Stop()
	for {
		if s := b.String(); strings.Contains(s, substr) {
			return s
		}
		select {
		case <-written:
		case <-timer.C:
			t.Fatalf("waited %s for %q; got:\n%s", deadline, substr, b.String())
		}
	}
}
