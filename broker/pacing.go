package broker

import (
	"errors"

	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/pacing"
)

// Pacing: the rotation floor and the expiry margin are package pacing; here
// is what they mean for a family and a caller.

// serveHeldBack answers a caller the rotation floor keeps from a refresh:
// the current token while it is unexpired, with the metric and last_error
// saying so; a token that expired before the floor lifts (a provider
// whose tokens live under 5 s) cannot be handed out, and the caller is
// told when to come back.
func (b *Broker) serveHeldBack(e *entry, v *view, floor *pacing.FloorError) (access.Token, error) {
	b.metrics.RotationsHeldBack.Add(1)
	e.mu.Lock()
	if !errors.Is(e.lastErr, pacing.ErrRotationFloor) {
		e.lastErr = floor
	}
	e.mu.Unlock()
	now := b.opts.Now()
	if !now.Before(v.fam.Access.ExpiresAt) {
		return access.Token{}, &brokererr.UnavailableError{Component: brokererr.ComponentProvider, RetryAfter: floor.Until.Sub(now), Err: floor}
	}
	e.markUsed()
	return b.timing(v).Token(b.opts.Now()), nil
}
