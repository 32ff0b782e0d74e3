// Package pacing is how often a credential's tokens are refreshed and how
// long before its end a token stops being handed out: pure functions of a
// token's lifetime; and how often consumers' rejected-token reports may
// make the broker ask the provider or refresh (Rejections).
package pacing

import (
	"errors"
	"fmt"
	"time"
)

// How often a credential's tokens are refreshed for staleness. Two
// numbers, both derived from the access token's own lifetime, so that a
// provider answering expires_in: 5 (or a credential configured with a 10 s
// lifetime) cannot make every GetAccessToken spend a rotation.

// MinRotationInterval is the floor's floor: however short a provider makes
// its tokens live, a credential is not refreshed for staleness more than
// once per 5 s (12 rotations a minute, each two store writes and an audit
// record).
const MinRotationInterval = 5 * time.Second

// ExpiryMargin is how long before its expiry a token of lifetime life stops
// being handed out: the configured expiry delta (10 s by default), but at
// most a quarter of the lifetime. A fixed 10 s margin made a token living
// 10 s or less never fresh, so every call refreshed it. A quarter keeps a
// token in service for its first three quarters — the same share the
// family.Timing.CheckMinRemaining grants a caller's min_remaining — and still
// gives a consumer a quarter of the lifetime to use it.
func ExpiryMargin(delta, life time.Duration) time.Duration {
	return max(min(delta, life/4), 0)
}

// RotationInterval is the least time between two refreshes of a credential
// that only staleness asks for: half the token's lifetime, at least
// MinRotationInterval. Half, because ExpiryMargin already keeps a token in
// service for three quarters of its life: the floor binds only when
// something wants tokens sooner than that (a min_remaining between half and
// three quarters of the lifetime) or when tokens live under 10 s, where
// MinRotationInterval takes over. A rejected-token report is its own reason
// (bounded by the rejection interval and checked by introspection where the
// provider offers it), and so is a reauthentication: neither waits for the
// floor.
func RotationInterval(life time.Duration) time.Duration {
	return max(life/2, MinRotationInterval)
}

// ErrRotationFloor is why a caller got a token with less left than it
// asked for: its credential was refreshed too recently to be refreshed
// again.
var ErrRotationFloor = errors.New("broker: refreshed too recently to refresh again")

// FloorError says, for last_error and for callers that cannot be served
// at all, when the credential may be refreshed again: its tokens live
// Life, so it is refreshed at most once per Interval, next at Until.
type FloorError struct {
	Life, Interval time.Duration
	Until          time.Time
}

func (e *FloorError) Error() string {
	return fmt.Sprintf("%v: the provider's access tokens live %s, so at most one refresh per %s is made; handing out the current token until %s",
		ErrRotationFloor, e.Life.Round(time.Millisecond), e.Interval.Round(time.Millisecond), e.Until.UTC().Format(time.RFC3339Nano))
}

func (e *FloorError) Unwrap() error { return ErrRotationFloor }

// RefreshAhead is how long before expiry a used token is refreshed: a tenth
// of its life, between 1s and 5m.
func RefreshAhead(life time.Duration) time.Duration {
	return min(max(life/10, time.Second), 5*time.Minute)
}

// MaxCutoffAllowance bounds how long before the scheduled rotation replicas
// stop handing out a token: room for clock skew between replicas and for a
// rotation's notice to travel. Shorter tokens get a fortieth of their
// lifetime, so a 5 s token is cut off 125 ms early, not half a second.
const MaxCutoffAllowance = 500 * time.Millisecond

// CutoffAllowance is how long before a scheduled rotation a token of
// lifetime life stops being handed out.
func CutoffAllowance(life time.Duration) time.Duration {
	return max(min(MaxCutoffAllowance, life/40), 0)
}

// RejectionProbeInterval bounds the introspections rejected-token reports
// cause per credential when the provider keeps vouching for the token
// (never longer than the rejection interval itself).
const RejectionProbeInterval = time.Second

// Rejections paces one credential's rejected-token reports with two
// windows: a report that leads to a refresh closes the rejection interval
// (30 s by default), so consumers cannot burn rotations at will; one the
// provider disproves only closes the short probe interval, so a false
// alarm does not block the report of a real revocation seconds later. The
// zero value has seen no report; not safe for concurrent use (the
// caller's lock guards it).
type Rejections struct {
	// refreshed is when a report last caused a refresh; probed when one
	// last made the broker ask the provider.
	refreshed, probed time.Time
}

// Wait is how long a report at now must wait under interval, the
// rejection interval (zero or less: not at all).
func (r *Rejections) Wait(now time.Time, interval time.Duration) time.Duration {
	return max(r.refreshed.Add(interval).Sub(now), r.probed.Add(min(RejectionProbeInterval, interval)).Sub(now))
}

// Probed records that a report at now made the broker ask the provider.
func (r *Rejections) Probed(now time.Time) { r.probed = now }

// Refreshed records that a report at now caused a refresh.
func (r *Rejections) Refreshed(now time.Time) { r.refreshed = now }
