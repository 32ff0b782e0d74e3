package broker

import (
	"context"
	"net/url"
	"sync"
	"time"
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

// refreshAhead is how long before expiry a used token is refreshed: a tenth
// of its life, between 1s and 5m.
func refreshAhead(life time.Duration) time.Duration {
	return min(max(life/10, time.Second), 5*time.Minute)
}

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
	due := a.ExpiresAt.Add(-refreshAhead(a.ExpiresAt.Sub(a.IssuedAt)) - expiryMargin(b.opts.expiryDelta, life))
	// Never sooner than the rotation floor allows (see rotationInterval).
	if floor := v.fam.LastRefreshAt.Add(rotationInterval(life)); !v.fam.LastRefreshAt.IsZero() && floor.After(due) {
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
	if v.fam.Status != StatusActive {
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
	t := time.NewTicker(b.opts.schedulerInterval)
	defer t.Stop()
	slots := &refreshSlots{perEndpoint: make(map[string]int)}
	sched := newSchedule()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			b.refreshDue(ctx, slots, sched)
		}
	}
}

// refreshSlots counts scheduled refreshes in flight, in all and per token
// endpoint. The scheduler takes slots; the refreshes give them back.
type refreshSlots struct {
	mu          sync.Mutex
	total       int
	perEndpoint map[string]int
}

// take reserves a slot at endpoint, or reports that none is free: then
// the credential waits for a later tick, and the pass goes on to the
// others instead of blocking behind a provider that does not answer.
func (s *refreshSlots) take(endpoint string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.total >= maxScheduledRefreshes || s.perEndpoint[endpoint] >= maxScheduledPerEndpoint {
		return false
	}
	s.total++
	s.perEndpoint[endpoint]++
	return true
}

func (s *refreshSlots) give(endpoint string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total--
	if s.perEndpoint[endpoint]--; s.perEndpoint[endpoint] <= 0 {
		delete(s.perEndpoint, endpoint)
	}
}

// endpointOf names a credential's token endpoint by scheme and host (with
// port): the unit a hanging provider takes down.
func endpointOf(v *view) string {
	u, err := url.Parse(v.cred.Spec.endpoint().TokenURL)
	if err != nil {
		return ""
	}
	return u.Scheme + "://" + u.Host
}

// refreshDue starts the refreshes that are due. It looks at the
// credentials whose time in the schedule has come, those it meant to look
// at again on this tick, and a sweep of at most sweepPerTick others — not
// at every credential, so that a tick with nothing due costs the same at
// 100,000 credentials as at 1,000.
func (b *Broker) refreshDue(schedCtx context.Context, slots *refreshSlots, sched *schedule) {
	now := b.opts.now()
	sched.tick++
	// Taken first: what this tick defers goes to the next one.
	soon := sched.soon
	sched.soon = nil
	for len(sched.timers) > 0 && !sched.timers[0].at.After(now) {
		it := sched.timers[0]
		sched.setTime(it, time.Time{})
		if !b.check(schedCtx, slots, sched, it.e, now, false) {
			return
		}
	}
	for _, e := range soon {
		if !b.check(schedCtx, slots, sched, e, now, false) {
			return
		}
	}
	fresh := sched.next >= len(sched.ring)
	if fresh {
		sched.ring, sched.next = b.snapshotEntries(), 0
	}
	end := min(sched.next+sched.sweep, len(sched.ring))
	for _, e := range sched.ring[sched.next:end] {
		if !b.check(schedCtx, slots, sched, e, now, fresh) {
			return
		}
	}
	sched.next = end
}

// check starts e's refresh if it is due and places e in the schedule
// again; listed says e was taken from the broker's entries on this tick,
// so it need not be looked up again. It reports false when the scheduler
// is to stop.
func (b *Broker) check(schedCtx context.Context, slots *refreshSlots, sched *schedule, e *entry, now time.Time, listed bool) bool {
	if schedCtx.Err() != nil {
		return false
	}
	it := sched.item(e)
	if it.seen == sched.tick {
		return true
	}
	it.seen = sched.tick
	if !listed && !b.holds(e) {
		sched.forget(it)
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
		sched.soon = append(sched.soon, e)
		return true
	case now.Before(retryAt):
		sched.setTime(it, retryAt)
		return true
	case !held && !b.due(e, v, now):
		if at, soon := b.nextCheck(e, v, now); soon {
			sched.soon = append(sched.soon, e)
		} else {
			sched.setTime(it, at)
		}
		return true
	}
	// Due: look again on the next tick, when the refresh is in flight or
	// done, or a slot may be free.
	sched.soon = append(sched.soon, e)
	endpoint := endpointOf(v)
	if !slots.take(endpoint) {
		return true
	}
	started := b.goTracked(func() {
		defer slots.give(endpoint)
		need := func(v *view) bool {
			return e.rescue.Load() != nil || b.due(e, v, b.opts.now())
		}
		ctx, cancel := context.WithTimeout(b.ctx, b.opts.refreshTimeout)
		defer cancel()
		if _, err := b.refresh(ctx, e, need); err != nil {
			e.mu.Lock()
			e.retryAt = b.opts.now().Add(scheduledFailureWait)
			e.mu.Unlock()
			b.log.WarnContext(ctx, "scheduled refresh failed", "credential", e.id, "err", err)
		}
	})
	if !started {
		slots.give(endpoint)
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
