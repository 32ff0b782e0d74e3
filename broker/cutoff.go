package broker

import (
	"context"
	"fmt"
	"time"

	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/notice"
	"github.com/rotavault/rotavault/broker/pacing"
	"github.com/rotavault/rotavault/internal/ctxwait"
	"github.com/rotavault/rotavault/provider"
)

// The serving cutoff. Providers such as ory/fosite kill the previous access
// token when they rotate the refresh token. Every replica caches the family's
// access token and hands it out without reading the store, so once any
// replica rotates, the others would hand out a dead token until they learn
// of the rotation. Two mechanisms close that window:
//
//   - Scheduled rotations. The time R at which the family is refreshed on
//     schedule (accessDue: expiry − refreshAhead − expiryMargin, never before
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
//     (NoticeAccessRotated) to the notice log; every other replica re-reads
//     the family at its next poll (500 ms) and stops handing out the old
//     token. On the refreshing replica itself, callers stop getting the old
//     token the moment the refresh token is presented (entry.presenting). A
//     reauthentication is announced by its own notice (family activated).
//
// For providers that keep the previous access token alive until it expires
// (Salesforce, JWT issuers) none of this applies: the token is handed out
// until expiry − expiryMargin, as before.

// killsPrevious reports whether v's provider kills the previous access
// token at a rotation: as configured, else by provider kind: Salesforce
// keeps it; a generic provider is assumed to kill it (the safe side) until
// introspection after a rotation found otherwise (detectPreviousAccess).
func killsPrevious(v *view) bool {
	switch v.cred.Spec.PreviousAccessToken {
	case credspec.PreviousAccessRevoked:
		return true
	case credspec.PreviousAccessKept:
		return false
	}
	return v.cred.Spec.ProviderKind != credspec.ProviderSalesforce && v.fam.PreviousAccess != credspec.PreviousAccessKept
}

// detectPreviousAccess finds out, for a generic provider with an
// introspection endpoint and no previous_access_token configured, whether
// the rotation that replaced prev's access token killed it: one
// introspection of that token right after the rotation, and one family
// write recording the answer, once per family. A token that was about to
// expire anyway tells nothing and is not asked about.
func (b *Broker) detectPreviousAccess(e *entry, prev, next *view) {
	spec := prev.cred.Spec
	a := prev.fam.Access
	if spec.PreviousAccessToken != credspec.PreviousAccessDefault || spec.ProviderKind == credspec.ProviderSalesforce || spec.IntrospectionURL == "" ||
		prev.fam.PreviousAccess != credspec.PreviousAccessDefault || a == nil || !b.opts.Now().Add(introspectTimeout).Before(a.ExpiresAt) {
		return
	}
	b.goTracked(func() {
		ctx, cancel := context.WithTimeout(b.ctx, introspectTimeout)
		defer cancel()
		in, err := b.provider.IntrospectToken(ctx, spec.Endpoint(), spec.ClientCredentials(), a.Token, provider.HintAccessToken)
		if err != nil {
			b.log.DebugContext(ctx, "could not introspect the previous access token; its fate stays unknown", "credential", e.id, "err", err)
			return
		}
		found := credspec.PreviousAccessRevoked
		if in.Active {
			found = credspec.PreviousAccessKept
		}
		if err := b.notePreviousAccess(ctx, e, next.fam.FamilyID, found); err != nil {
			b.log.WarnContext(ctx, "could not record what the provider does with previous access tokens", "credential", e.id, "err", err)
			return
		}
		b.log.InfoContext(ctx, "introspected the access token a rotation replaced", "credential", e.id, "previous_access_token", found)
	})
}

// notePreviousAccess records found in family familyID while it is idle and
// before its token's cutoff (a family past it is left to the next
// rotation: recording "kept" would end a cutoff replicas already acted on).
func (b *Broker) notePreviousAccess(ctx context.Context, e *entry, familyID string, found credspec.PreviousAccess) error {
	_, err := b.updateFamily(ctx, e, nil, func(cur *view) (*family.Record, error) {
		if cur.fam.FamilyID != familyID || cur.fam.PreviousAccess == found || !cur.fam.Idle() || b.pastCutoff(cur, b.opts.Now()) {
			return nil, nil
		}
		return cur.fam.NotedPreviousAccess(found)
	})
	return err
}

// cutoff is when every replica stops handing out v's access token because
// a replica may rotate it on schedule; zero when there is none (no token,
// or a provider that keeps the previous access token). A pure function of
// the stored record and the credential, so every replica agrees on it.
func (b *Broker) cutoff(v *view) time.Time {
	if v.fam.Status != family.StatusActive || v.fam.Access == nil || !killsPrevious(v) {
		return time.Time{}
	}
	return b.accessDue(v).Add(-pacing.CutoffAllowance(tokenLife(v.fam)))
}

// pastCutoff reports whether now is at or past v's cutoff.
func (b *Broker) pastCutoff(v *view, now time.Time) bool {
	c := b.cutoff(v)
	return !c.IsZero() && !now.Before(c)
}

// useUntil is when a consumer must stop using v's access token: its cutoff
// (never after its expiry) where a rotation kills it, else expiry − margin
// (the expiry itself for a token the rotation floor makes us serve past its
// margin).
func (b *Broker) useUntil(v *view, now time.Time) time.Time {
	a := v.fam.Access
	if c := b.cutoff(v); !c.IsZero() {
		if c.After(a.ExpiresAt) {
			return a.ExpiresAt
		}
		return c
	}
	if end := a.ExpiresAt.Add(-pacing.ExpiryMargin(b.opts.Refresh.ExpiryDelta, tokenLife(v.fam))); end.After(now) {
		return end
	}
	return a.ExpiresAt
}

// holdsBack is heldBack, except that the floor lifts at the cutoff: past
// it no replica hands the token out, so the refresh may not wait.
func (b *Broker) holdsBack(v *view, now time.Time) (*pacing.FloorError, bool) {
	floor, held := heldBack(v, now)
	if held && b.pastCutoff(v, now) {
		return nil, false
	}
	return floor, held
}

// beingRotated reports whether this replica is presenting the refresh token
// of v's generation right now at a provider that kills the previous access
// token: the cached token may be dead by the time a caller uses it.
func (e *entry) beingRotated(v *view) bool {
	p := e.presenting.Load()
	return p != 0 && p == v.fam.Generation+1
}

// presentingAt marks that the refresh token of v's generation is being
// presented (when its provider kills the previous access token); the
// returned function clears the mark.
func (e *entry) presentingAt(v *view) (done func()) {
	if !killsPrevious(v) {
		return func() {}
	}
	mark := v.fam.Generation + 1
	e.presenting.Store(mark)
	return func() { e.presenting.CompareAndSwap(mark, 0) }
}

// announceOffSchedule tells the other replicas that the family was rotated
// before its previous access token's cutoff (prev is the family as claimed,
// with that token), so they stop handing it out at their next notice poll.
// It runs in the background: the caller has its token already.
func (b *Broker) announceOffSchedule(e *entry, prev, next *view) {
	if prev.fam.Access == nil || !killsPrevious(prev) {
		return
	}
	c := b.cutoff(prev)
	now := b.opts.Now()
	if !c.IsZero() && !now.Before(c) {
		return // on schedule: every replica stopped serving it at the cutoff
	}
	b.metrics.OffScheduleRotations.Add(1)
	n := &notice.Notice{Kind: notice.AccessRotated, CredentialID: e.id, FamilyID: next.fam.FamilyID, Generation: next.fam.Generation, DetectedAt: now}
	b.goTracked(func() {
		ctx, cancel := persistContext(b.ctx)
		defer cancel()
		if err := b.notices.Append(ctx, *n); err != nil {
			b.log.WarnContext(ctx, "could not announce an off-schedule rotation; other replicas stop serving the old token at its cutoff",
				"credential", e.id, "generation", next.fam.Generation, "err", err)
		}
	})
}

// cutOff reports whether v's token would serve a caller wanting
// minRemaining but for the cutoff (or this replica's rotation in flight):
// such a caller waits for the rotation.
func (b *Broker) cutOff(e *entry, v *view, minRemaining time.Duration) bool {
	now := b.opts.Now()
	return b.unexpired(v, minRemaining, now) && (b.pastCutoff(v, now) || e.beingRotated(v))
}

// stateOf is v's family state at this replica's clock: held when a rotation
// waits in memory, cut_off when an idle family's token passed its cutoff.
func (b *Broker) stateOf(v *view, held bool) family.State {
	if s := family.StateOf(v.fam, held); s != family.StateActive {
		return s
	}
	return v.fam.StateAt(b.cutoff(v), b.opts.Now())
}

// awaitScheduledRotation waits, for a caller past v's cutoff, until the
// scheduled rotation time (at most cutoffAllowance): tokens handed out
// just before the cutoff stay alive for that long, on every replica and
// despite clock skew below it. A caller cut off by this replica's own
// rotation in flight does not wait here: it joins the rotation.
func (b *Broker) awaitScheduledRotation(ctx context.Context, e *entry, v *view) error {
	if e.beingRotated(v) {
		return nil
	}
	wait := b.accessDue(v).Sub(b.opts.Now())
	if wait <= 0 {
		return nil
	}
	if err := ctxwait.Sleep(ctx, min(wait, pacing.MaxCutoffAllowance)); err != nil {
		return fmt.Errorf("broker: waiting for the scheduled rotation: %w", err)
	}
	return nil
}
