package broker

import (
	"context"
	"time"

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

// due reports whether the scheduler refreshes e now (family.Timing's
// ScheduledDue; idle refreshes are a shared duty: duties.go).
func (b *Broker) due(e *entry, v *view, now time.Time) bool {
	return b.opts.RefuseShortGrace(v.cred.Spec) == nil && b.timing(v).ScheduledDue(e.used.Load(), b.owns(e.id), now)
}

func (b *Broker) runScheduler(ctx context.Context) {
	b.scheduler().Run(ctx, b.opts.Schedule.Interval, schedule.NewTracked[*entry](&b.metrics.Scheduled), schedule.NewSlots(maxScheduledRefreshes, maxScheduledPerEndpoint))
}

// scheduler is the proactive-refresh scheduler (package schedule runs it)
// over this broker.
func (b *Broker) scheduler() schedule.Runner[*entry] {
	return schedule.Runner[*entry]{Core: schedCore{b}, Wakes: &b.wakes, Now: b.opts.Now, Go: b.goTracked, FailureWait: scheduledFailureWait}
}

// schedCore is the rotation core as the scheduler sees it: its entries,
// each due as due says, or when a rotation is held in memory; other
// changes wake it (entry.wake).
type schedCore struct{ b *Broker }

var _ schedule.Core[*entry] = schedCore{}

// Holds reports whether e is still the broker's entry for its credential.
func (c schedCore) Holds(e *entry) bool {
	c.b.entriesMu.RLock()
	defer c.b.entriesMu.RUnlock()
	return c.b.entries[e.id] == e
}

func (c schedCore) Look(e *entry, now time.Time) schedule.Look {
	v := e.view.Load()
	held := e.rescue.Load() != nil
	e.mu.Lock()
	l := schedule.Look{Busy: e.flight != nil, RetryAt: e.retryAt}
	e.mu.Unlock()
	switch {
	case l.Busy || now.Before(l.RetryAt):
	case held || c.b.due(e, v, now):
		l.Due, l.Endpoint = true, schedule.Endpoint(v.cred.Spec.Endpoint().TokenURL)
	default:
		l.Next = c.b.timing(v).NextCheck(c.b.owns(e.id), now)
	}
	return l
}

func (c schedCore) Refresh(e *entry) error {
	b := c.b
	need := func(v *view) bool {
		return e.rescue.Load() != nil || b.due(e, v, b.opts.Now())
	}
	ctx, cancel := context.WithTimeout(b.ctx, b.opts.Refresh.Timeout)
	defer cancel()
	_, err := b.refresh(ctx, e, nil, need)
	return err
}

func (c schedCore) HoldBack(e *entry, until time.Time, err error) {
	e.mu.Lock()
	e.retryAt = until
	e.mu.Unlock()
	c.b.log.WarnContext(c.b.ctx, "scheduled refresh failed", "credential", e.id, "err", err)
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
