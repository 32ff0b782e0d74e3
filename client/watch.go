package client

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/ctxwait"
)

// watch follows the server's revocation notices until Close: it drops the
// cached tokens of every credential a notice names, reconnects with its
// cursor after a broken stream (so no notice is missed), and when the
// cursor is refused — the notice log moved past it — drops every cached
// token and starts over from the present.
func (c *Client) watch() {
	failures := 0
	for {
		started, err := c.watchOnce()
		if c.ctx.Err() != nil {
			return
		}
		if started {
			failures = 0
		}
		if c.cursorRefused(err) {
			c.mu.Lock()
			c.dropAllLocked()
			c.cursor = ""
			c.mu.Unlock()
			if failures == 0 {
				failures++
				continue // at once: cached tokens are not served meanwhile
			}
		}
		failures++
		wait := c.opts.backoffDelay(failures)
		if d := detailsOf(err).retryDelay; d > wait {
			wait = min(d, c.opts.maxBackoff)
		}
		if ctxwait.Sleep(c.ctx, wait) != nil {
			return
		}
	}
}

// cursorRefused reports whether err says the watch's cursor can no longer
// be resumed from: OUT_OF_RANGE (CURSOR_EXPIRED), or INVALID_ARGUMENT for
// a cursor the log does not know (a store restored from backup).
func (c *Client) cursorRefused(err error) bool {
	c.mu.Lock()
	resuming := c.cursor != ""
	c.mu.Unlock()
	switch status.Code(err) {
	case codes.OutOfRange:
		return true
	case codes.InvalidArgument:
		return resuming
	}
	return false
}

// watchOnce runs one stream from the current cursor until it breaks, and
// reports whether it started.
func (c *Client) watchOnce() (bool, error) {
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	c.mu.Lock()
	cursor := c.cursor
	c.mu.Unlock()
	stream, err := c.vault.WatchRevocations(ctx, &rotavaultv1.WatchRevocationsRequest{Cursor: cursor})
	if err != nil {
		return false, err
	}
	started := false
	for {
		m, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = status.Error(codes.Unavailable, "the revocation watch ended")
			}
			return started, err
		}
		switch ev := m.GetEvent().(type) {
		case *rotavaultv1.WatchRevocationsResponse_Started:
			started = true
			c.mu.Lock()
			// On a resumed stream this is the cursor it resumed from.
			c.cursor = ev.Started.GetCursor()
			c.watchStarts++
			close(c.watchStarted)
			c.watchStarted = make(chan struct{})
			c.mu.Unlock()
		case *rotavaultv1.WatchRevocationsResponse_Notice:
			n := ev.Notice
			c.mu.Lock()
			if e := c.entries[n.GetCredentialId()]; e != nil {
				c.dropLocked(e)
			}
			if n.GetCursor() != "" {
				c.cursor = n.GetCursor()
			}
			c.mu.Unlock()
			if c.opts.onNotice != nil {
				c.opts.onNotice(n)
			}
		}
	}
}
