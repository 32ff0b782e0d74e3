package client

import (
	"context"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/ctxwait"
)

// retryDelay says whether err is worth another attempt and how long to wait
// first: a jittered exponential backoff, or the server's RetryInfo when it
// asks for longer.
func (o *options) retryDelay(err error, attempt int) (time.Duration, bool) {
	d := detailsOf(err)
	switch status.Code(err) {
	case codes.Unavailable, codes.Aborted:
	case codes.ResourceExhausted:
		if d.reason == reasonRejectionRateLimited {
			// The report names the current token and the server just
			// decided about it: waiting tens of seconds to ask again is the
			// caller's decision, not a library's.
			return 0, false
		}
	default:
		return 0, false
	}
	return max(o.backoffDelay(attempt), d.retryDelay), true
}

// backoffDelay is the wait after the attempt-th failure in a row: between
// half and all of first·2^(attempt-1), capped at the longest backoff.
func (o *options) backoffDelay(attempt int) time.Duration {
	d := o.backoff
	for i := 1; i < attempt && d < o.maxBackoff; i++ {
		d *= 2
	}
	d = min(d, o.maxBackoff)
	return d/2 + rand.N(d/2+1)
}

// getAccessToken calls the server, retrying as retryDelay says, at most
// maxAttempts times and never past deadline() (zero: no deadline), which is
// read again before every wait.
func (c *Client) getAccessToken(ctx context.Context, req *rotavaultv1.GetAccessTokenRequest, deadline func() time.Time) (*rotavaultv1.GetAccessTokenResponse, error) {
	for attempt := 1; ; attempt++ {
		resp, err := c.vault.GetAccessToken(ctx, req)
		if err == nil {
			return resp, nil
		}
		wait, retry := c.opts.retryDelay(err, attempt)
		if !retry || attempt >= c.opts.maxAttempts {
			return nil, err
		}
		if dl := deadline(); !dl.IsZero() && time.Until(dl) < wait {
			return nil, err // the caller would be gone before the next attempt
		}
		if ctxwait.Sleep(ctx, wait) != nil {
			return nil, err
		}
	}
}
