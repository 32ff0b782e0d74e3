package broker

import (
	"errors"
	"time"

	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/pacing"
)

// Pacing: the rotation floor and the expiry margin are package pacing; here
// is what they mean for a family and a caller.

// tokenLife is the lifetime of a family's access token: from the refresh
// that brought it (our clock, the base of its expiry) to its expiry. The
// recorded IssuedAt may be the provider's issued_at, which its clock or the
// session's age can put long before; it counts only for a token no refresh
// brought (an installed family).
func tokenLife(f *family.Record) time.Duration {
	a := f.Access
	from := a.IssuedAt
	if f.LastRefreshAt.After(from) && f.LastRefreshAt.Before(a.ExpiresAt) {
		from = f.LastRefreshAt
	}
	return a.ExpiresAt.Sub(from)
}

// heldBack reports whether v's family was refreshed less than its rotation
// interval ago, and until when a refresh for staleness must wait. A family
// without an access token, or never refreshed, is not held back.
func heldBack(v *view, now time.Time) (*pacing.FloorError, bool) {
	a := v.fam.Access
	if v.fam.Status != family.StatusActive || a == nil || v.fam.LastRefreshAt.IsZero() {
		return nil, false
	}
	life := tokenLife(v.fam)
	interval := pacing.RotationInterval(life)
	until := v.fam.LastRefreshAt.Add(interval)
	if !now.Before(until) {
		return nil, false
	}
	return &pacing.FloorError{Life: life, Interval: interval, Until: until}, true
}

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
	return b.toAccessToken(v), nil
}
