package broker

import (
	"context"
	"time"
)

// Proactive refresh: a token someone uses is refreshed shortly before it
// expires, so callers rarely wait; a family nobody uses is refreshed before
// the provider's idle timeout would kill it.
const (
	maxScheduledRefreshes = 8
	scheduledFailureWait  = 30 * time.Second
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
	return a.ExpiresAt.Add(-refreshAhead(a.ExpiresAt.Sub(a.IssuedAt)) - b.opts.expiryDelta)
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
	return !idle.IsZero() && !now.Before(idle)
}

func (b *Broker) runScheduler(ctx context.Context) {
	t := time.NewTicker(b.opts.schedulerInterval)
	defer t.Stop()
	sem := make(chan struct{}, maxScheduledRefreshes)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			b.refreshDue(ctx, sem)
		}
	}
}

func (b *Broker) refreshDue(schedCtx context.Context, sem chan struct{}) {
	now := b.opts.now()
	for _, e := range b.snapshotEntries() {
		v := e.view.Load()
		held := e.rescue.Load() != nil
		e.mu.Lock()
		wait := now.Before(e.retryAt)
		busy := e.flight != nil
		e.mu.Unlock()
		if busy || wait || (!held && !b.due(e, v, now)) {
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-schedCtx.Done():
			return
		}
		started := b.goTracked(func() {
			defer func() { <-sem }()
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
			<-sem
			return
		}
	}
}
