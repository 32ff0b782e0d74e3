package client

import (
	"context"
	"time"
)

// WithClock sets the clock the cache judges expiry by (tests share the
// broker's fake clock).
func WithClock(now func() time.Time) Option {
	return optionFunc(func(o *options) error {
		o.now = now
		return nil
	})
}

// AwaitWatchStarts waits until the revocation watch has started n streams
// since New.
func (c *Client) AwaitWatchStarts(ctx context.Context, n int) error {
	for {
		c.mu.Lock()
		got, started := c.watchStarts, c.watchStarted
		c.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-started:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// WatchStarts is how many watch streams have started since New.
func (c *Client) WatchStarts() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.watchStarts
}
