package broker

import (
	"context"
	"fmt"
	"time"

	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/detect"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/notice"
	"github.com/rotavault/rotavault/broker/pacing"
	"github.com/rotavault/rotavault/internal/ctxwait"
)

// The serving cutoff (family.Timing computes it and explains why): this
// replica's side of it, learning what a provider does with the previous
// access token, marking a presentation in flight, announcing rotations
// off the schedule, and making callers past the cutoff wait.

// timing is v's family.Timing under this broker's expiry margin.
func (b *Broker) timing(v *view) family.Timing {
	return family.Timing{Cred: v.cred, Fam: v.fam, ExpiryDelta: b.opts.Refresh.ExpiryDelta}
}

// detectPreviousAccess finds out, for a generic provider with an
// introspection endpoint and no previous_access_token configured, whether
// the rotation that replaced prev's access token killed it: one
// introspection of that token right after the rotation, and one family
// write recording the answer, once per family. A token that was about to
// expire anyway tells nothing and is not asked about.
func (b *Broker) detectPreviousAccess(e *entry, prev, next *view) {
	f, a := detectFamily(e, prev), prev.fam.Access
	if a == nil || !f.AsksPreviousAccess(prev.fam.PreviousAccess, a.ExpiresAt, b.opts.Now()) {
		return
	}
	b.goTracked(func() {
		ctx, cancel := context.WithTimeout(b.ctx, detect.IntrospectTimeout)
		defer cancel()
		found, err := b.asker().PreviousAccess(ctx, f)
		if err != nil {
			b.log.DebugContext(ctx, "could not introspect the previous access token; its fate stays unknown", "credential", e.id, "err", err)
			return
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
		if cur.fam.FamilyID != familyID || cur.fam.PreviousAccess == found || !cur.fam.Idle() || b.timing(cur).PastCutoff(b.opts.Now()) {
			return nil, nil
		}
		return cur.fam.NotedPreviousAccess(found)
	})
	return err
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
	if !(family.Timing{Cred: v.cred, Fam: v.fam}).KillsPrevious() {
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
	t := b.timing(prev)
	if prev.fam.Access == nil || !t.KillsPrevious() {
		return
	}
	c := t.Cutoff()
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
	t, now := b.timing(v), b.opts.Now()
	return t.Unexpired(minRemaining, now) && (t.PastCutoff(now) || e.beingRotated(v))
}

// stateOf is v's family state at this replica's clock: held when a rotation
// waits in memory, cut_off when an idle family's token passed its cutoff.
func (b *Broker) stateOf(v *view, held bool) family.State {
	if s := family.StateOf(v.fam, held); s != family.StateActive {
		return s
	}
	return v.fam.StateAt(b.timing(v).Cutoff(), b.opts.Now())
}

// awaitScheduledRotation waits, for a caller past v's cutoff, until the
// scheduled rotation time (at most pacing.CutoffAllowance): tokens handed out
// just before the cutoff stay alive for that long, on every replica and
// despite clock skew below it. A caller cut off by this replica's own
// rotation in flight does not wait here: it joins the rotation.
func (b *Broker) awaitScheduledRotation(ctx context.Context, e *entry, v *view) error {
	if e.beingRotated(v) {
		return nil
	}
	wait := b.timing(v).AccessDue().Sub(b.opts.Now())
	if wait <= 0 {
		return nil
	}
	if err := ctxwait.Sleep(ctx, min(wait, pacing.MaxCutoffAllowance)); err != nil {
		return fmt.Errorf("broker: waiting for the scheduled rotation: %w", err)
	}
	return nil
}
