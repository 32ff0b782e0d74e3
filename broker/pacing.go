package broker

import (
	"errors"
	"fmt"
	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/brokererr"
	"time"
)

// Pacing: how often a credential's tokens are refreshed for staleness. Two
// numbers, both derived from the access token's own lifetime, so that a
// provider answering expires_in: 5 (or a credential configured with a 10 s
// lifetime) cannot make every GetAccessToken spend a rotation.

// minRotationInterval is the floor's floor: however short a provider makes
// its tokens live, a credential is not refreshed for staleness more than
// once per 5 s (12 rotations a minute, each two store writes and an audit
// record).
const minRotationInterval = 5 * time.Second

// tokenLife is the lifetime of a family's access token: from the refresh
// that brought it (our clock, the base of its expiry) to its expiry. The
// recorded IssuedAt may be the provider's issued_at, which its clock or the
// session's age can put long before; it counts only for a token no refresh
// brought (an installed family).
func tokenLife(f *familyRecord) time.Duration {
	a := f.Access
	from := a.IssuedAt
	if f.LastRefreshAt.After(from) && f.LastRefreshAt.Before(a.ExpiresAt) {
		from = f.LastRefreshAt
	}
	return a.ExpiresAt.Sub(from)
}

// expiryMargin is how long before its expiry a token of lifetime life stops
// being handed out: the configured expiry delta (10 s by default), but at
// most a quarter of the lifetime. A fixed 10 s margin made a token living
// 10 s or less never fresh, so every call refreshed it. A quarter keeps a
// token in service for its first three quarters — the same share
// checkMinRemaining grants a caller's min_remaining — and still gives a
// consumer a quarter of the lifetime to use it.
func expiryMargin(delta, life time.Duration) time.Duration {
	return max(min(delta, life/4), 0)
}

// rotationInterval is the least time between two refreshes of a credential
// that only staleness asks for: half the token's lifetime, at least
// minRotationInterval. Half, because expiryMargin already keeps a token in
// service for three quarters of its life: the floor binds only when
// something wants tokens sooner than that (a min_remaining between half and
// three quarters of the lifetime) or when tokens live under 10 s, where
// minRotationInterval takes over. A rejected-token report is its own reason
// (bounded by the rejection interval and checked by introspection where the
// provider offers it), and so is a reauthentication: neither waits for the
// floor.
func rotationInterval(life time.Duration) time.Duration {
	return max(life/2, minRotationInterval)
}

// errRotationFloor is why a caller got a token with less left than it
// asked for: its credential was refreshed too recently to be refreshed
// again.
var errRotationFloor = errors.New("broker: refreshed too recently to refresh again")

// rotationFloorError says, for last_error and for callers that cannot be
// served at all, when the credential may be refreshed again.
type rotationFloorError struct {
	life, interval time.Duration
	until          time.Time
}

func (e *rotationFloorError) Error() string {
	return fmt.Sprintf("%v: the provider's access tokens live %s, so at most one refresh per %s is made; handing out the current token until %s",
		errRotationFloor, e.life.Round(time.Millisecond), e.interval.Round(time.Millisecond), e.until.UTC().Format(time.RFC3339Nano))
}

func (e *rotationFloorError) Unwrap() error { return errRotationFloor }

// heldBack reports whether v's family was refreshed less than its rotation
// interval ago, and until when a refresh for staleness must wait. A family
// without an access token, or never refreshed, is not held back.
func heldBack(v *view, now time.Time) (*rotationFloorError, bool) {
	a := v.fam.Access
	if v.fam.Status != StatusActive || a == nil || v.fam.LastRefreshAt.IsZero() {
		return nil, false
	}
	life := tokenLife(v.fam)
	interval := rotationInterval(life)
	until := v.fam.LastRefreshAt.Add(interval)
	if !now.Before(until) {
		return nil, false
	}
	return &rotationFloorError{life: life, interval: interval, until: until}, true
}

// serveHeldBack answers a caller the rotation floor keeps from a refresh:
// the current token while it is unexpired, with the metric and last_error
// saying so; a token that expired before the floor lifts (a provider
// whose tokens live under 5 s) cannot be handed out, and the caller is
// told when to come back.
func (b *Broker) serveHeldBack(e *entry, v *view, floor *rotationFloorError) (access.Token, error) {
	b.metrics.RotationsHeldBack.Add(1)
	e.mu.Lock()
	if !errors.Is(e.lastErr, errRotationFloor) {
		e.lastErr = floor
	}
	e.mu.Unlock()
	now := b.opts.Now()
	if !now.Before(v.fam.Access.ExpiresAt) {
		return access.Token{}, &brokererr.UnavailableError{Component: brokererr.ComponentProvider, RetryAfter: floor.until.Sub(now), Err: floor}
	}
	e.markUsed()
	return b.toAccessToken(v), nil
}
