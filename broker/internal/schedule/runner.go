package schedule

import (
	"context"
	"time"
)

// Look is the rotation core's answer, on a tick, about one credential.
type Look struct {
	// Busy: a refresh of it is in flight; it is looked at again on the
	// next tick.
	Busy bool
	// RetryAt holds its scheduled refreshes back after one failed.
	RetryAt time.Time
	// Due: refresh it now, at Endpoint (see Endpoint), the unit Slots
	// bound. Otherwise Next is when it may become due by time alone
	// (zero: only when woken).
	Due      bool
	Next     time.Time
	Endpoint string
}

// Core is what the scheduler needs of the rotation core, for credentials
// named by keys of type K. Its methods are called from the scheduler's
// goroutine, except Refresh and HoldBack.
type Core[K comparable] interface {
	// Holds reports whether k is still one of the core's credentials.
	Holds(k K) bool
	// Look says what k needs at now. When Busy, or now is before
	// RetryAt, the rest is not looked at and may be left out.
	Look(k K, now time.Time) Look
	// Refresh refreshes k if it still needs it (it may have been
	// refreshed since the look); run in a goroutine of its own.
	Refresh(k K) error
	// HoldBack keeps k's scheduled refreshes back until until, after a
	// refresh failed with err.
	HoldBack(k K, until time.Time, err error)
}

// Runner runs the scheduler over a Core: each tick looks at the
// credentials a Schedule says to (woken, timed, soon), places
// each in the schedule again, and starts the refreshes that are due,
// each in a slot of a Slots. A Runner is a value; Run and Tick belong to
// the scheduler's goroutine.
type Runner[K comparable] struct {
	Core  Core[K]
	Wakes *Wakes[K]
	Now   func() time.Time
	// Go runs f in a goroutine its owner waits for at shutdown, and
	// reports false, running nothing, once the owner is closed.
	Go func(f func()) bool
	// FailureWait is how long a failed scheduled refresh holds the next
	// one back.
	FailureWait time.Duration
}

// Run ticks every interval until ctx ends (a tick ends early once the
// owner is closed).
func (r Runner[K]) Run(ctx context.Context, interval time.Duration, s *Schedule[K], slots *Slots) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.Tick(ctx, s, slots)
		}
	}
}

// Tick starts the refreshes that are due (see Schedule.Tick).
func (r Runner[K]) Tick(ctx context.Context, s *Schedule[K], slots *Slots) {
	now := r.Now()
	s.Tick(now, r.Wakes, func(k K) bool { return r.check(ctx, s, slots, k, now) })
}

// check starts k's refresh if it is due and places k in the schedule
// again. It reports false when the scheduler is to stop.
func (r Runner[K]) check(ctx context.Context, s *Schedule[K], slots *Slots, k K, now time.Time) bool {
	if ctx.Err() != nil {
		return false
	}
	if !s.FirstLook(k) {
		return true
	}
	if !r.Core.Holds(k) {
		s.Forget(k)
		return true
	}
	l := r.Core.Look(k, now)
	switch {
	case l.Busy:
		s.Soon(k)
		return true
	case now.Before(l.RetryAt):
		s.At(k, l.RetryAt)
		return true
	case !l.Due:
		s.At(k, l.Next)
		return true
	}
	// Due: look again on the next tick, when the refresh is in flight or
	// done, or a slot may be free.
	s.Soon(k)
	if !slots.Take(l.Endpoint) {
		return true
	}
	started := r.Go(func() {
		defer slots.Give(l.Endpoint)
		if err := r.Core.Refresh(k); err != nil {
			r.Core.HoldBack(k, r.Now().Add(r.FailureWait), err)
		}
	})
	if !started {
		slots.Give(l.Endpoint)
		return false
	}
	return true
}
