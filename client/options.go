package client

import (
	"errors"
	"fmt"
	"time"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// Defaults of the Client's options.
const (
	// DefaultRefreshMargin is how long before its expiry a cached token stops
	// being handed out (at most a quarter of the token's lifetime).
	DefaultRefreshMargin = time.Minute
	// DefaultMaxAttempts is how many times a GetAccessToken call is tried
	// when the server answers UNAVAILABLE, RESOURCE_EXHAUSTED or ABORTED.
	DefaultMaxAttempts = 4
	// DefaultBackoff and DefaultMaxBackoff bound the waits between retries
	// and between reconnections of the revocation watch: the wait doubles
	// from the first to the second, with jitter.
	DefaultBackoff    = 100 * time.Millisecond
	DefaultMaxBackoff = 10 * time.Second
)

// Option configures a Client (see New). The interface is sealed: options
// come from this package.
type Option interface {
	applyClient(*options) error
}

type options struct {
	margin      time.Duration
	maxAttempts int
	backoff     time.Duration
	maxBackoff  time.Duration
	watch       bool
	onNotice    func(*rotavaultv1.Notice)
	now         func() time.Time
}

func defaultOptions() options {
	return options{
		margin:      DefaultRefreshMargin,
		maxAttempts: DefaultMaxAttempts,
		backoff:     DefaultBackoff,
		maxBackoff:  DefaultMaxBackoff,
		watch:       true,
		now:         time.Now,
	}
}

type optionFunc func(*options) error

func (f optionFunc) applyClient(o *options) error { return f(o) }

// WithRefreshMargin sets how long before its expiry a cached token is
// replaced (default DefaultRefreshMargin, between 0 and 1h). For tokens that
// live less than four margins, a quarter of their lifetime is used instead,
// so that a fresh token is always worth caching. When the margin is reached
// the Client asks the server for a token with at least that much lifetime
// left, which makes the server refresh it if needed.
func WithRefreshMargin(d time.Duration) Option {
	return optionFunc(func(o *options) error {
		if d < 0 || d > time.Hour {
			return fmt.Errorf("client: refresh margin %s out of range [0, 1h]", d)
		}
		o.margin = d
		return nil
	})
}

// WithMaxAttempts sets how many times one GetAccessToken call is tried
// (default DefaultMaxAttempts, between 1 and 100; 1 means no retry). Only
// UNAVAILABLE, RESOURCE_EXHAUSTED (except a rate-limited rejected-token
// report) and ABORTED are retried, and never past the caller's deadline.
func WithMaxAttempts(n int) Option {
	return optionFunc(func(o *options) error {
		if n < 1 || n > 100 {
			return fmt.Errorf("client: max attempts %d out of range [1, 100]", n)
		}
		o.maxAttempts = n
		return nil
	})
}

// WithBackoff sets the first and the longest wait between retries and
// between reconnections of the revocation watch (defaults DefaultBackoff
// and DefaultMaxBackoff; 1ms <= first <= longest <= 5m). The wait doubles
// per attempt, with jitter; a server's google.rpc.RetryInfo asking for a
// longer wait is honoured (by the watch, up to the longest wait).
func WithBackoff(first, longest time.Duration) Option {
	return optionFunc(func(o *options) error {
		if first < time.Millisecond || longest < first || longest > 5*time.Minute {
			return fmt.Errorf("client: backoff %s..%s out of range (1ms <= first <= longest <= 5m)", first, longest)
		}
		o.backoff, o.maxBackoff = first, longest
		return nil
	})
}

// WithoutRevocationWatch turns the revocation watch off: cached tokens are
// then served until their refresh margin even when their family was
// revoked meanwhile. For environments where a long-lived stream to the
// server is not possible; a resource server's 401 still reaches the server
// through Transport.
func WithoutRevocationWatch() Option {
	return optionFunc(func(o *options) error {
		o.watch = false
		return nil
	})
}

// WithNoticeHandler calls f with every notice the revocation watch receives
// (FAMILY_REVOKED, FAMILY_ACTIVATED), after the credential's cached tokens
// were dropped: to alert, or to stop work that needs the credential. f runs
// on the watch's goroutine, one notice at a time: it must return promptly,
// and must not call Close, which waits for it (call it from another
// goroutine).
// Notices missed while the watch was disconnected are replayed on
// reconnection; when they can no longer be (the server's notice log moved
// past the Client's position), every cached token is dropped and f is not
// called for them.
func WithNoticeHandler(f func(*rotavaultv1.Notice)) Option {
	return optionFunc(func(o *options) error {
		if f == nil {
			return errors.New("client: nil notice handler")
		}
		o.onNotice = f
		return nil
	})
}

// TokenOption adjusts one Token call. The interface is sealed: options come
// from this package.
type TokenOption interface {
	applyToken(*tokenOptions)
}

type tokenOptions struct {
	minRemaining time.Duration
	rejected     *Token
}

type tokenOptionFunc func(*tokenOptions)

func (f tokenOptionFunc) applyToken(o *tokenOptions) { f(o) }

// WithMinRemaining asks for a token with at least d of lifetime left; a
// cached token is handed out only with more than both d and the Client's
// refresh margin left. Negative d counts as 0. More than three
// quarters of the credential's token lifetime is refused by the server
// (INVALID_ARGUMENT, reason MIN_LIFETIME_UNATTAINABLE).
func WithMinRemaining(d time.Duration) TokenOption {
	return tokenOptionFunc(func(o *tokenOptions) { o.minRemaining = max(d, 0) })
}

// WithRejected reports that a resource server refused tok (for example with
// HTTP 401): the Client drops it and the server hands out a newer token if
// tok is still its current one and the provider does not vouch for it. The
// server rate-limits such reports per credential (RESOURCE_EXHAUSTED with
// reason REJECTION_RATE_LIMITED, not retried). Transport does this for you.
func WithRejected(tok Token) TokenOption {
	return tokenOptionFunc(func(o *tokenOptions) { o.rejected = &tok })
}
