package broker

import (
	"context"
	"net/url"
	"time"

	"github.com/rotavault/rotavault/broker/internal/schedule"
	"github.com/rotavault/rotavault/broker/pacing"
)

// Proactive refresh: a token someone uses is refreshed shortly before it
// expires, so callers rarely wait; a family nobody uses is refreshed before
// the provider's idle timeout would kill it.
const (
	// maxScheduledRefreshes bounds the scheduled refreshes in flight (each a
	// goroutine and a provider connection), and maxScheduledPerEndpoint
	// those at one token endpoint: a provider that hangs holds at most its
	// own share of the slots until the refresh timeout, never every slot.
	// It takes maxScheduledRefreshes/maxScheduledPerEndpoint (8) hanging
	// endpoints at once to delay other credentials' refreshes.
	maxScheduledRefreshes   = 32
	maxScheduledPerEndpoint = 4
	scheduledFailureWait    = 30 * time.Second
)

// nextRefresh says when the scheduler refreshes a view's family, assuming its
// token is in use; zero when it never will.
func (b *Broker) nextRefresh(v *view) time.Time {
	if v.fam.Status != StatusActive {
		return time.Time{}
	}
	due := b.accessDue(v)
	if idle := b.idleDue(v); !idle.IsZero() && idle.Before(due) {
		due = idle
	}
	return due
}

func (b *Broker) accessDue(v *view) time.Time {
	a := v.fam.Access
	if a == nil {
		return v.fam.LastRefreshAt // an imported token whose first refresh failed: now
	}
	life := tokenLife(v.fam)
	due := a.ExpiresAt.Add(-pacing.RefreshAhead(a.ExpiresAt.Sub(a.IssuedAt)) - pacing.ExpiryMargin(b.opts.Refresh.ExpiryDelta, life))
	// Never sooner than the rotation floor allows (see rotationInterval).
	if floor := v.fam.LastRefreshAt.Add(pacing.RotationInterval(life)); !v.fam.LastRefreshAt.IsZero() && floor.After(due) {
		due = floor
	}
	return due
}

// idleDue is half-way through the provider's refresh-token idle timeout.
func (b *Broker) idleDue(v *view) time.Time {
	idle := v.cred.Spec.RefreshIdle
	if idle <= 0 {
		return time.Time{}
	}
	since := v.fam.LastRefreshAt
	if since.IsZero() {
		since = v.fam.StartedAt
	}
	return since.Add(idle / 2)
}

func (b *Broker) due(e *entry, v *view, now time.Time) bool {
	if v.fam.Status != StatusActive || b.opts.RefuseShortGrace(v.cred.Spec) != nil {
		return false
	}
	if v.fam.Access == nil {
		return true
	}
	if e.used.Load() && !now.Before(b.accessDue(v)) {
		return true
	}
	idle := b.idleDue(v)
	return !idle.IsZero() && !now.Before(idle) && b.owns(e.id) // a shared duty: duties.go
}

func (b *Broker) runScheduler(ctx context.Context) {
	t := time.NewTicker(b.opts.Schedule.Interval)
	defer t.Stop()
	slots := schedule.NewSlots(maxScheduledRefreshes, maxScheduledPerEndpoint)
	sched := schedule.NewTracked[*entry](&b.metrics.Scheduled)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			b.refreshDue(ctx, slots, sched)
		}
	}
}

// endpointOf names a credential's token endpoint by scheme and host (with
// port): the unit a hanging provider takes down.
func endpointOf(v *view) string {
	u, err := url.Parse(v.cred.Spec.Endpoint().TokenURL)
	if err != nil {
		return ""
	}
	return u.Scheme + "://" + u.Host
}

// refreshDue starts the refreshes that are due (see schedule.Tick).
func (b *Broker) refreshDue(schedCtx context.Context, slots *schedule.Slots, sched *schedule.Schedule[*entry]) {
	now := b.opts.Now()
	sched.Tick(now, b.snapshotEntries, func(e *entry, listed bool) bool {
		return b.check(schedCtx, slots, sched, e, now, listed)
	})
}

// check starts e's refresh if it is due and places e in the schedule
// again; listed says e was taken from the broker's entries on this tick,
// so it need not be looked up again. It reports false when the scheduler
// is to stop.
func (b *Broker) check(schedCtx context.Context, slots *schedule.Slots, sched *schedule.Schedule[*entry], e *entry, now time.Time, listed bool) bool {
	if schedCtx.Err() != nil {
		return false
	}
	if !sched.FirstLook(e) {
		return true
	}
	if !listed && !b.holds(e) {
		sched.Forget(e)
		return true
	}
	v := e.view.Load()
	held := e.rescue.Load() != nil
	e.mu.Lock()
	retryAt := e.retryAt
	busy := e.flight != nil
	e.mu.Unlock()
	switch {
	case busy:
		sched.Soon(e)
		return true
	case now.Before(retryAt):
		sched.At(e, retryAt)
		return true
	case !held && !b.due(e, v, now):
		if at, soon := b.nextCheck(e, v, now); soon {
			sched.Soon(e)
		} else {
			sched.At(e, at)
		}
		return true
	}
	// Due: look again on the next tick, when the refresh is in flight or
	// done, or a slot may be free.
	sched.Soon(e)
	endpoint := endpointOf(v)
	if !slots.Take(endpoint) {
		return true
	}
	started := b.goTracked(func() {
		defer slots.Give(endpoint)
		need := func(v *view) bool {
			return e.rescue.Load() != nil || b.due(e, v, b.opts.Now())
		}
		ctx, cancel := context.WithTimeout(b.ctx, b.opts.Refresh.Timeout)
		defer cancel()
		if _, err := b.refresh(ctx, e, need); err != nil {
			e.mu.Lock()
			e.retryAt = b.opts.Now().Add(scheduledFailureWait)
			e.mu.Unlock()
			b.log.WarnContext(ctx, "scheduled refresh failed", "credential", e.id, "err", err)
		}
	})
	if !started {
		slots.Give(endpoint)
		return false
	}
	return true
}

// nextCheck says when a credential that is not due now may become due by
// the passing of time alone: at its access refresh time or half-way
// through the idle timeout, whichever is first (zero: never). soon asks
// for a look on every tick instead: its token is in the refresh-ahead
// window, unused, and a first use makes it due at once.
func (b *Broker) nextCheck(e *entry, v *view, now time.Time) (at time.Time, soon bool) {
	if v.fam.Status != StatusActive || v.fam.Access == nil {
		return time.Time{}, false
	}
	if access := b.accessDue(v); now.Before(access) {
		at = access
	} else if now.Before(v.fam.Access.ExpiresAt) && !e.used.Load() {
		return time.Time{}, true
	}
	// Another replica's idle refresh: the sweep looks again (the duty may
	// come here), not every tick.
	if idle := b.idleDue(v); !idle.IsZero() && (at.IsZero() || idle.Before(at)) && (now.Before(idle) || b.owns(e.id)) {
		at = idle
	}
	return at, false
}

// holds reports whether e is still the broker's entry for its credential.
func (b *Broker) holds(e *entry) bool {
	b.entriesMu.RLock()
	defer b.entriesMu.RUnlock()
	return b.entries[e.id] == e
}
