package broker

import (
	"context"
	"time"

	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/internal/lease"
	"github.com/rotavault/rotavault/broker/internal/schedule"
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

func (b *Broker) due(e *entry, v *view, now time.Time) bool {
	if v.fam.Status != family.StatusActive || b.opts.RefuseShortGrace(v.cred.Spec) != nil {
		return false
	}
	if v.fam.Access == nil {
		return true
	}
	if e.used.Load() && !now.Before(b.timing(v).AccessDue()) {
		return true
	}
	idle := b.timing(v).IdleDue()
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

// refreshDue starts the refreshes that are due (see schedule.Tick).
func (b *Broker) refreshDue(schedCtx context.Context, slots *schedule.Slots, sched *schedule.Schedule[*entry]) {
	now := b.opts.Now()
	sched.Tick(now, &b.wakes, b.snapshotEntries, func(e *entry, listed bool) bool {
		return b.check(schedCtx, slots, sched, e, now, listed)
	})
}

// check starts e's refresh if it is due and places e in the schedule
// again (listed: e is known to be the broker's). It reports false when
// the scheduler is to stop.
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
		sched.At(e, b.nextCheck(e, v, now))
		return true
	}
	// Due: look again on the next tick, when the refresh is in flight or
	// done, or a slot may be free.
	sched.Soon(e)
	endpoint := schedule.Endpoint(v.cred.Spec.Endpoint().TokenURL)
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

// nextCheck says when e, not due now, may become due by time alone: at its
// access refresh time or half-way through the idle timeout, whichever is
// first (zero: never). Other changes wake it (entry.wake).
func (b *Broker) nextCheck(e *entry, v *view, now time.Time) (at time.Time) {
	if v.fam.Status != family.StatusActive || v.fam.Access == nil {
		return time.Time{}
	}
	if access := b.timing(v).AccessDue(); now.Before(access) {
		at = access
	}
	if idle := b.timing(v).IdleDue(); !idle.IsZero() && (at.IsZero() || idle.Before(at)) && (now.Before(idle) || b.owns(e.id)) {
		at = idle
	}
	return at
}

// wake makes the next tick look at e; a tick sees nothing else but its
// timers: every change that can make e due sooner wakes it once visible —
// a view installed (load, setView: any write, here or elsewhere), a first
// use (markUsed), a held rotation, a retry wait lifted, a shard gained.
func (e *entry) wake() { e.wakes.Wake(e) }

func (b *Broker) wakeShards(shards uint64) {
	for _, e := range b.snapshotEntries() {
		if shards&(1<<lease.ShardOf(e.id)) != 0 {
			e.wake()
		}
	}
}

// holds reports whether e is still the broker's entry for its credential.
func (b *Broker) holds(e *entry) bool {
	b.entriesMu.RLock()
	defer b.entriesMu.RUnlock()
	return b.entries[e.id] == e
}
