package client

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/ctxwait"
)

// follower is one revocation watch that resumes itself after a broken
// stream with its cursor, so that no notice is missed: the Client's, which
// drops cached tokens, and Watch's, which hands every event to its caller.
// Its hooks run on its goroutine, one at a time.
type follower struct {
	vault rotavaultv1.TokenVaultServiceClient
	opts  *options
	ids   []string
	// cursor is the position to resume from ("" for the present).
	cursor func() string
	// started is told of each stream's start; notice of each notice, in
	// order; event of every message, before either.
	started func(cursor string)
	notice  func(*rotavaultv1.Notice)
	event   func(*rotavaultv1.WatchRevocationsResponse)
	// refused decides about a cursor the server no longer resumes from:
	// true starts over from the present, false ends the watch with err.
	refused func(err error) bool
	// fatal, if set, names errors that end the watch instead of a retry.
	fatal func(err error) bool
	// broken, if set, is told of each broken stream and the wait before
	// the next attempt.
	broken func(err error, wait time.Duration)
}

// run follows notices until ctx ends (it returns nil) or refused or fatal
// end the watch (it returns their error).
func (f *follower) run(ctx context.Context) error {
	failures := 0
	for {
		started, err := f.once(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if started {
			failures = 0
		}
		if f.cursorRefused(err) {
			if !f.refused(err) {
				return err
			}
			if failures == 0 {
				failures++
				continue // at once: nothing is followed meanwhile
			}
		} else if f.fatal != nil && f.fatal(err) {
			return err
		}
		failures++
		wait := f.opts.backoffDelay(failures)
		if d := detailsOf(err).retryDelay; d > wait {
			wait = min(d, f.opts.maxBackoff)
		}
		if f.broken != nil {
			f.broken(err, wait)
		}
		if ctxwait.Sleep(ctx, wait) != nil {
			return nil
		}
	}
}

// cursorRefused reports whether err says the watch's cursor can no longer
// be resumed from: OUT_OF_RANGE (CURSOR_EXPIRED), or INVALID_ARGUMENT for
// a cursor the log does not know (a store restored from backup).
func (f *follower) cursorRefused(err error) bool {
	switch status.Code(err) {
	case codes.OutOfRange:
		return true
	case codes.InvalidArgument:
		return f.cursor() != ""
	}
	return false
}

// once runs one stream from the current cursor until it breaks, and
// reports whether it started.
func (f *follower) once(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := f.vault.WatchRevocations(ctx, &rotavaultv1.WatchRevocationsRequest{CredentialIds: f.ids, Cursor: f.cursor()})
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
		if f.event != nil {
			f.event(m)
		}
		switch ev := m.GetEvent().(type) {
		case *rotavaultv1.WatchRevocationsResponse_Started:
			started = true
			// On a resumed stream this is the cursor it resumed from.
			f.started(ev.Started.GetCursor())
		case *rotavaultv1.WatchRevocationsResponse_Notice:
			f.notice(ev.Notice)
		}
	}
}

// watch follows the server's revocation notices until Close: it drops the
// cached tokens of every credential a notice names, reconnects with its
// cursor after a broken stream (so no notice is missed), and when the
// cursor is refused — the notice log moved past it — drops every cached
// token and starts over from the present.
func (c *Client) watch() {
	f := &follower{
		vault: c.vault,
		opts:  &c.opts,
		cursor: func() string {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.cursor
		},
		started: func(cursor string) {
			c.mu.Lock()
			c.cursor = cursor
			c.watchStarts++
			close(c.watchStarted)
			c.watchStarted = make(chan struct{})
			c.mu.Unlock()
		},
		notice: func(n *rotavaultv1.Notice) {
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
		},
		refused: func(error) bool {
			c.mu.Lock()
			c.dropAllLocked()
			c.cursor = ""
			c.mu.Unlock()
			return true
		},
	}
	_ = f.run(c.ctx)
}

// WatchConfig says what Watch follows and whom it tells. The functions run
// on Watch's goroutine, one at a time, and must return promptly.
type WatchConfig struct {
	// CredentialIDs limits the watch to these credentials; none: all the
	// caller may see.
	CredentialIDs []string
	// Cursor resumes after this cursor, from an earlier notice or start;
	// empty starts at the present.
	Cursor string
	// OnEvent, if set, gets every message of every stream: each stream's
	// start (its cursor is where it resumed from) and each notice.
	OnEvent func(*rotavaultv1.WatchRevocationsResponse)
	// OnBroken, if set, is told when a stream broke and how long Watch
	// waits before resuming.
	OnBroken func(err error, wait time.Duration)
}

// Watch follows the server's revocation notices through conn: it resumes a
// broken stream by itself with the last cursor it saw — across the
// server's connection-age limit (GOAWAY), a restart, or another replica
// taking over — backing off as WithBackoff says (other options are
// ignored), so that no notice is missed and none is seen twice.
//
// It returns nil when ctx ends. It ends by itself only when resuming
// cannot help, returning the server's status error: OUT_OF_RANGE (reason
// CURSOR_EXPIRED; also INVALID_ARGUMENT for a cursor the log does not
// know) when the notice log no longer holds the cursor — resynchronise by
// reading the credentials, then watch without a cursor —, UNAUTHENTICATED
// or PERMISSION_DENIED, INVALID_ARGUMENT for a bad request, and NOT_FOUND.
func Watch(ctx context.Context, conn grpc.ClientConnInterface, cfg WatchConfig, opts ...Option) error {
	if conn == nil {
		return errors.New("client: nil connection")
	}
	o := defaultOptions()
	for _, opt := range opts {
		if err := opt.applyClient(&o); err != nil {
			return err
		}
	}
	cursor := cfg.Cursor
	f := &follower{
		vault:   rotavaultv1.NewTokenVaultServiceClient(conn),
		opts:    &o,
		ids:     cfg.CredentialIDs,
		cursor:  func() string { return cursor },
		started: func(c string) { cursor = c },
		notice: func(n *rotavaultv1.Notice) {
			if n.GetCursor() != "" {
				cursor = n.GetCursor()
			}
		},
		event:   cfg.OnEvent,
		refused: func(error) bool { return false },
		fatal:   watchFatal,
		broken:  cfg.OnBroken,
	}
	return f.run(ctx)
}

// watchFatal names the answers that retrying the same watch cannot change.
func watchFatal(err error) bool {
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied, codes.InvalidArgument, codes.NotFound, codes.OutOfRange:
		return true
	}
	return false
}
