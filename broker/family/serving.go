package family

import (
	"fmt"
	"time"

	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/pacing"
)

// Serving: whether a family's access token can serve a caller, the token
// as handed out, and what a rejected-token report meant.

// StillSameLiveToken reports whether cur (of credential record curCred) is
// the family seen was (of seenCred), at the same incarnation, generation
// and token, active and idle: no claim (a refresh in progress may have
// rotated the token at the provider already) and no doubt (a refresh whose
// answer was lost may have).
func StillSameLiveToken(seenCred *Credential, seen *Record, curCred *Credential, cur *Record) bool {
	return cur.Idle() &&
		curCred.Incarnation == seenCred.Incarnation &&
		cur.FamilyID == seen.FamilyID &&
		cur.Generation == seen.Generation &&
		cur.RefreshToken == seen.RefreshToken
}

// Fresh reports whether the access token can serve a caller wanting
// minRemaining: unexpired by the margin, and not past its cutoff.
func (t Timing) Fresh(minRemaining time.Duration, now time.Time) bool {
	return t.Unexpired(minRemaining, now) && !t.PastCutoff(now)
}

// Unexpired reports whether the access token has minRemaining and the
// expiry margin left at now.
func (t Timing) Unexpired(minRemaining time.Duration, now time.Time) bool {
	if t.Fam.Status != StatusActive || t.Fam.Access == nil {
		return false
	}
	a := t.Fam.Access
	return !now.Add(max(minRemaining, pacing.ExpiryMargin(t.ExpiryDelta, t.Fam.TokenLife()))).After(a.ExpiresAt)
}

// CheckMinRemaining refuses a minimum lifetime that fresh tokens of this
// credential cannot meet with room to spare: granting it would mean a
// refresh on (nearly) every call, burning rotations.
func (t Timing) CheckMinRemaining(minRemaining time.Duration) error {
	if minRemaining == 0 {
		return nil
	}
	lifetime := t.Cred.Spec.AccessTokenLifetime()
	if a := t.Fam.Access; a != nil && t.Cred.Spec.AccessTokenLife == 0 {
		lifetime = a.ExpiresAt.Sub(a.IssuedAt)
	}
	if limit := lifetime * 3 / 4; minRemaining > limit {
		return &brokererr.InvalidArgumentError{
			Field:  "min_remaining_lifetime",
			Reason: fmt.Sprintf("%s is more than this credential's tokens can offer (at most %s: 3/4 of their %s lifetime)", minRemaining, limit.Truncate(time.Millisecond), lifetime.Round(time.Second)),
			Code:   "MIN_LIFETIME_UNATTAINABLE",
		}
	}
	return nil
}

// Token is the access token as handed to a caller at now.
func (t Timing) Token(now time.Time) access.Token {
	a := t.Fam.Access
	return access.Token{
		UseUntil:    t.UseUntil(now),
		Token:       a.Token,
		Type:        a.Type,
		InstanceURL: a.InstanceURL,
		Scopes:      a.Scopes,
		IssuedAt:    a.IssuedAt,
		ExpiresAt:   a.ExpiresAt,
		FamilyID:    t.Fam.FamilyID,
		Generation:  t.Fam.Generation,
		Fingerprint: a.Fingerprint,
	}
}

// ReauthRequired is the caller's error for a family that cannot serve:
// revoked, or never installed.
func ReauthRequired(id string, fam *Record) error {
	switch fam.Status {
	case StatusRevoked:
		return fmt.Errorf("%w: the token family of %s was revoked (%s); reauthenticate", brokererr.ErrReauthRequired, id, fam.RevokedReason)
	default:
		return fmt.Errorf("%w: %s has no token family yet; reauthenticate", brokererr.ErrReauthRequired, id)
	}
}

// RejectionOutcome judges a report against the family it was made on
// (before) and the family answering it (after).
func RejectionOutcome(r *access.RejectedToken, before, after *Record) access.RejectedOutcome {
	switch {
	case r == nil:
		return access.RejectedNone
	case before.Status != StatusActive || before.Access == nil || !before.Names(r):
		return access.RejectedStale
	case after.FamilyID == before.FamilyID && after.Generation == before.Generation:
		return access.RejectedNoChange
	}
	return access.RejectedReplaced
}

// Names reports whether r names f's current token.
func (f *Record) Names(r *access.RejectedToken) bool {
	if r.Fingerprint != "" {
		return r.Fingerprint == f.Access.Fingerprint
	}
	return r.Generation == f.Generation
}
