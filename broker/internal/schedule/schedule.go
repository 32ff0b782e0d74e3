// Package schedule is the proactive-refresh scheduler's bookkeeping: which
// credentials to look at on a tick (those whose time has come, those put
// off to the next tick, and a bounded sweep of the others) and how many
// scheduled refreshes are in flight. The rotation core decides whether a
// credential is due and runs its refresh; this package only orders the
// looks. A Schedule belongs to the scheduler's goroutine: not safe for
// concurrent use. Slots are.
package schedule

import (
	"container/heap"
	"sync"
	"sync/atomic"
	"time"
)

// SweepPerTick bounds the credentials the scheduler looks at on one tick
// besides those whose time has come: a tick costs the same with 100,000
// credentials as with 1,000 (BenchmarkSchedulerTick).
//
// The sweep finds what the timer heap cannot see coming, because it
// happens in another part of the broker without telling the scheduler: a
// new credential, a view replaced by a caller's refresh or a remote
// notice, a token first used after it went stale, a rotated family held
// in memory (rescue). Up to SweepPerTick credentials the sweep covers all
// of them on every tick, as the full scan did; beyond, each credential
// once every ⌈n/SweepPerTick⌉ ticks.
const SweepPerTick = 1000

// Schedule is the scheduler's own state, keyed by credential (K).
type Schedule[K comparable] struct {
	tick uint64
	// Sweep is how many credentials a tick sweeps: SweepPerTick.
	Sweep int
	items map[K]*item[K]
	// timers holds the items with a time to look at them again, earliest
	// first.
	timers timerHeap[K]
	// soon are looked at on the next tick: refreshes in flight or just
	// started, tokens in their refresh-ahead window that nobody used yet
	// (a first use makes them due), credentials that found no free slot.
	soon []K
	// ring is a snapshot of every credential, swept Sweep at a time
	// from next; taken again when the sweep reaches its end.
	ring []K
	next int
	// tracked, when set, receives Tracked after each tick.
	tracked *atomic.Int64
}

// New returns an empty schedule.
func New[K comparable]() *Schedule[K] {
	return &Schedule[K]{Sweep: SweepPerTick, items: make(map[K]*item[K])}
}

// NewTracked is New publishing to tracked, after each tick, how many
// credentials the schedule holds a place for (Tracked).
func NewTracked[K comparable](tracked *atomic.Int64) *Schedule[K] {
	s := New[K]()
	s.tracked = tracked
	return s
}

// item is one credential's place in the schedule.
type item[K comparable] struct {
	k  K
	at time.Time
	// index in timers; -1 when the item has no time.
	index int
	// seen is the last tick that looked at the credential: once per tick,
	// as a started refresh shows as a flight only a little later.
	seen uint64
}

func (s *Schedule[K]) item(k K) *item[K] {
	it, ok := s.items[k]
	if !ok {
		it = &item[K]{k: k, index: -1}
		s.items[k] = it
	}
	return it
}

// Tick looks, through check, at the credentials whose time in the
// schedule has come at now, those it meant to look at again on this tick,
// and a sweep of at most Sweep others taken from all() — not at every
// credential, so that a tick with nothing due costs the same at 100,000
// credentials as at 1,000. listed tells check that the credential came
// from all() on this tick. A check returning false ends the tick.
func (s *Schedule[K]) Tick(now time.Time, all func() []K, check func(k K, listed bool) bool) {
	s.tick++
	if s.tracked != nil {
		defer func() { s.tracked.Store(int64(s.Tracked())) }()
	}
	// Taken first: what this tick defers goes to the next one.
	soon := s.soon
	s.soon = nil
	for len(s.timers) > 0 && !s.timers[0].at.After(now) {
		it := s.timers[0]
		s.setTime(it, time.Time{})
		if !check(it.k, false) {
			return
		}
	}
	for _, k := range soon {
		if !check(k, false) {
			return
		}
	}
	fresh := s.next >= len(s.ring)
	if fresh {
		s.ring, s.next = all(), 0
	}
	end := min(s.next+s.Sweep, len(s.ring))
	for _, k := range s.ring[s.next:end] {
		if !check(k, fresh) {
			return
		}
	}
	s.next = end
}

// FirstLook reports whether this tick has not looked at k yet, and marks
// it looked at.
func (s *Schedule[K]) FirstLook(k K) bool {
	it := s.item(k)
	if it.seen == s.tick {
		return false
	}
	it.seen = s.tick
	return true
}

// At makes the schedule look at k again at at; zero takes k off the timers.
func (s *Schedule[K]) At(k K, at time.Time) { s.setTime(s.item(k), at) }

// Soon makes the schedule look at k again on the next tick.
func (s *Schedule[K]) Soon(k K) { s.soon = append(s.soon, k) }

// Forget drops a credential the broker no longer has.
func (s *Schedule[K]) Forget(k K) {
	if it, ok := s.items[k]; ok {
		s.setTime(it, time.Time{})
		delete(s.items, k)
	}
}

// Tracked is how many credentials the schedule holds a place for.
func (s *Schedule[K]) Tracked() int { return len(s.items) }

// Timed is how many credentials have a time to be looked at again.
func (s *Schedule[K]) Timed() int { return len(s.timers) }

// setTime makes the heap look at it at at; zero removes it from the heap.
func (s *Schedule[K]) setTime(it *item[K], at time.Time) {
	switch {
	case at.IsZero():
		if it.index >= 0 {
			heap.Remove(&s.timers, it.index)
		}
	case it.index >= 0 && it.at.Equal(at):
		// In place already: the sweep mostly finds nothing new.
	case it.index >= 0:
		it.at = at
		heap.Fix(&s.timers, it.index)
	default:
		it.at = at
		heap.Push(&s.timers, it)
	}
}

// timerHeap orders items by time (container/heap).
type timerHeap[K comparable] []*item[K]

func (h timerHeap[K]) Len() int           { return len(h) }
func (h timerHeap[K]) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h timerHeap[K]) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}

func (h *timerHeap[K]) Push(x any) {
	it := x.(*item[K])
	it.index = len(*h)
	*h = append(*h, it)
}

func (h *timerHeap[K]) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	it.index = -1
	*h = old[:len(old)-1]
	return it
}

// Slots counts scheduled refreshes in flight, in all and per token
// endpoint. The scheduler takes slots; the refreshes give them back. Safe
// for concurrent use.
type Slots struct {
	mu                 sync.Mutex
	max, maxPer, total int
	perEndpoint        map[string]int
}

// NewSlots bounds the refreshes in flight to max in all and maxPer at one
// endpoint.
func NewSlots(max, maxPer int) *Slots {
	return &Slots{max: max, maxPer: maxPer, perEndpoint: make(map[string]int)}
}

// Take reserves a slot at endpoint, or reports that none is free: then
// the credential waits for a later tick, and the pass goes on to the
// others instead of blocking behind a provider that does not answer.
func (s *Slots) Take(endpoint string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.total >= s.max || s.perEndpoint[endpoint] >= s.maxPer {
		return false
	}
	s.total++
	s.perEndpoint[endpoint]++
	return true
}

// Give returns a slot Take reserved.
func (s *Slots) Give(endpoint string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total--
	if s.perEndpoint[endpoint]--; s.perEndpoint[endpoint] <= 0 {
		delete(s.perEndpoint, endpoint)
	}
}

// InFlight is how many slots are taken.
func (s *Slots) InFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}
