package family

import (
	"time"

	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/detect"
	"github.com/rotavault/rotavault/broker/pacing"
)

// The serving cutoff, computed by Timing. Providers such as ory/fosite kill the previous access
// token when they rotate the refresh token. Every replica caches the family's
// access token and hands it out without reading the store, so once any
// replica rotates, the others would hand out a dead token until they learn
// of the rotation. Two mechanisms close that window:
//
//   - Scheduled rotations. The time R at which the family is refreshed on
//     schedule (AccessDue: expiry − refreshAhead − expiryMargin, never before
//     the rotation floor) is a function of the shared stored record alone,
//     so every replica computes the same R. Every replica stops handing out
//     the token at the cutoff C = R − pacing.CutoffAllowance(life) (at most 500 ms):
//     callers arriving after C wait until R, then trigger or join the
//     refresh (on another replica: wait for the claim holder's result
//     through the store) instead of getting the old token. No replica
//     rotates on schedule before R, so a token handed out just before C
//     stays alive for the allowance, whatever the replicas' clock skew
//     below it.
//   - Rotations off the schedule (a min_remaining beyond the fresh window, a
//     confirmed rejected-token report, an idle-timeout refresh, a takeover):
//     the replica that stored one appends a replicas-only notice
//     (notice.AccessRotated) to the notice log; every other replica re-reads
//     the family at its next poll (500 ms) and stops handing out the old
//     token. On the refreshing replica itself, callers stop getting the old
//     token the moment the refresh token is presented (the broker's entry.presenting). A
//     reauthentication is announced by its own notice (family activated).
//
// For providers that keep the previous access token alive until it expires
// (Salesforce, JWT issuers) none of this applies: the token is handed out
// until expiry − expiryMargin, as before.

// Timing computes when things happen to a family from the stored records
// alone (and the configured expiry delta), so every replica computes the
// same times: when it is refreshed, when its access token's serving cutoff
// falls, until when a consumer may use that token. A value; the zero
// ExpiryDelta means none.
type Timing struct {
	Cred *Credential
	Fam  *Record
	// ExpiryDelta is the configured margin before expiry
	// (option.Refresh.ExpiryDelta).
	ExpiryDelta time.Duration
}

// KillsPrevious reports whether the provider kills the previous access
// token at a rotation: as configured, else by provider kind: Salesforce
// keeps it; a generic provider is assumed to kill it (the safe side) until
// introspection after a rotation found otherwise (the broker's detectPreviousAccess).
func (t Timing) KillsPrevious() bool {
	switch t.Cred.Spec.PreviousAccessToken {
	case credspec.PreviousAccessRevoked:
		return true
	case credspec.PreviousAccessKept:
		return false
	}
	return t.Cred.Spec.ProviderKind != credspec.ProviderSalesforce && t.Fam.PreviousAccess != credspec.PreviousAccessKept
}

// Cutoff is when every replica stops handing out the access token because
// a replica may rotate it on schedule; zero when there is none (no token,
// or a provider that keeps the previous access token). A pure function of
// the stored record and the credential, so every replica agrees on it.
func (t Timing) Cutoff() time.Time {
	if t.Fam.Status != StatusActive || t.Fam.Access == nil || !t.KillsPrevious() {
		return time.Time{}
	}
	return t.AccessDue().Add(-pacing.CutoffAllowance(t.Fam.TokenLife()))
}

// PastCutoff reports whether now is at or past the cutoff.
func (t Timing) PastCutoff(now time.Time) bool {
	c := t.Cutoff()
	return !c.IsZero() && !now.Before(c)
}

// UseUntil is when a consumer must stop using the access token: its cutoff
// (never after its expiry) where a rotation kills it, else expiry − margin
// (the expiry itself for a token the rotation floor makes us serve past its
// margin).
func (t Timing) UseUntil(now time.Time) time.Time {
	a := t.Fam.Access
	if c := t.Cutoff(); !c.IsZero() {
		if c.After(a.ExpiresAt) {
			return a.ExpiresAt
		}
		return c
	}
	if end := a.ExpiresAt.Add(-pacing.ExpiryMargin(t.ExpiryDelta, t.Fam.TokenLife())); end.After(now) {
		return end
	}
	return a.ExpiresAt
}

// HoldsBack is Record.HeldBack, except that the floor lifts at the cutoff: past
// it no replica hands the token out, so the refresh may not wait.
func (t Timing) HoldsBack(now time.Time) (*pacing.FloorError, bool) {
	floor, held := t.Fam.HeldBack(now)
	if held && t.PastCutoff(now) {
		return nil, false
	}
	return floor, held
}

// NextRefresh says when the scheduler refreshes the family, assuming its
// token is in use; zero when it never will.
func (t Timing) NextRefresh() time.Time {
	if t.Fam.Status != StatusActive {
		return time.Time{}
	}
	due := t.AccessDue()
	if idle := t.IdleDue(); !idle.IsZero() && idle.Before(due) {
		due = idle
	}
	return due
}

// AccessDue is when the scheduler refreshes a used token: expiry −
// refreshAhead − expiryMargin, never before the rotation floor.
func (t Timing) AccessDue() time.Time {
	a := t.Fam.Access
	if a == nil {
		return t.Fam.LastRefreshAt // an imported token whose first refresh failed: now
	}
	life := t.Fam.TokenLife()
	due := a.ExpiresAt.Add(-pacing.RefreshAhead(a.ExpiresAt.Sub(a.IssuedAt)) - pacing.ExpiryMargin(t.ExpiryDelta, life))
	// Never sooner than the rotation floor allows (see pacing.RotationInterval).
	if floor := t.Fam.LastRefreshAt.Add(pacing.RotationInterval(life)); !t.Fam.LastRefreshAt.IsZero() && floor.After(due) {
		due = floor
	}
	return due
}

// ScheduledDue reports whether the scheduler refreshes an active family
// at now: one without an access token (an imported token whose first
// refresh failed) at once, a used token (used) from AccessDue, and, on
// the replica whose duty it is (owns), any from IdleDue.
func (t Timing) ScheduledDue(used, owns bool, now time.Time) bool {
	if t.Fam.Status != StatusActive {
		return false
	}
	if t.Fam.Access == nil {
		return true
	}
	if used && !now.Before(t.AccessDue()) {
		return true
	}
	idle := t.IdleDue()
	return !idle.IsZero() && !now.Before(idle) && owns
}

// NextCheck says when a family not due at now may become due by time
// alone: at its access refresh time or half-way through the idle timeout
// (past already: only on the replica whose duty it is, owns), whichever
// is first; zero: never.
func (t Timing) NextCheck(owns bool, now time.Time) (at time.Time) {
	if t.Fam.Status != StatusActive || t.Fam.Access == nil {
		return time.Time{}
	}
	if access := t.AccessDue(); now.Before(access) {
		at = access
	}
	if idle := t.IdleDue(); !idle.IsZero() && (at.IsZero() || idle.Before(at)) && (now.Before(idle) || owns) {
		at = idle
	}
	return at
}

// IdleDue is half-way through the provider's refresh-token idle timeout.
func (t Timing) IdleDue() time.Time {
	idle := t.Cred.Spec.RefreshIdle
	if idle <= 0 {
		return time.Time{}
	}
	since := t.Fam.LastRefreshAt
	if since.IsZero() {
		since = t.Fam.StartedAt
	}
	return since.Add(idle / 2)
}

// TokenLife is the lifetime of a family's access token: from the refresh
// that brought it (our clock, the base of its expiry) to its expiry. The
// recorded IssuedAt may be the provider's issued_at, which its clock or the
// session's age can put long before; it counts only for a token no refresh
// brought (an installed family).
func (f *Record) TokenLife() time.Duration {
	a := f.Access
	from := a.IssuedAt
	if f.LastRefreshAt.After(from) && f.LastRefreshAt.Before(a.ExpiresAt) {
		from = f.LastRefreshAt
	}
	return a.ExpiresAt.Sub(from)
}

// HeldBack reports whether the family was refreshed less than its rotation
// interval ago, and until when a refresh for staleness must wait. A family
// without an access token, or never refreshed, is not held back.
func (f *Record) HeldBack(now time.Time) (*pacing.FloorError, bool) {
	a := f.Access
	if f.Status != StatusActive || a == nil || f.LastRefreshAt.IsZero() {
		return nil, false
	}
	life := f.TokenLife()
	interval := pacing.RotationInterval(life)
	until := f.LastRefreshAt.Add(interval)
	if !now.Before(until) {
		return nil, false
	}
	return &pacing.FloorError{Life: life, Interval: interval, Until: until}, true
}

// AliveAtProviderUntil is when a may first be expired at the provider.
func (a *AccessToken) AliveAtProviderUntil() time.Time {
	return detect.AliveAtProviderUntil(a.AliveUntil, a.ExpiresAt)
}
