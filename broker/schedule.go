package broker

import (
	"container/heap"
	"time"
)

// sweepPerTick bounds the credentials the scheduler looks at on one tick
// besides those whose time has come: a tick costs the same with 100,000
// credentials as with 1,000 (BenchmarkSchedulerTick).
//
// The sweep finds what the timer heap cannot see coming, because it
// happens in another part of the broker without telling the scheduler: a
// new credential, a view replaced by a caller's refresh or a remote
// notice, a token first used after it went stale, a rotated family held
// in memory (rescue). Up to sweepPerTick credentials the sweep covers all
// of them on every tick, as the full scan did; beyond, each credential
// once every ⌈n/sweepPerTick⌉ ticks.
const sweepPerTick = 1000

// schedule is the scheduler's own state, used by its goroutine only.
type schedule struct {
	tick uint64
	// sweep is how many credentials a tick sweeps: sweepPerTick.
	sweep int
	items map[*entry]*schedItem
	// timers holds the items with a time to look at them again, earliest
	// first.
	timers schedHeap
	// soon are looked at on the next tick: refreshes in flight or just
	// started, tokens in their refresh-ahead window that nobody used yet
	// (a first use makes them due), credentials that found no free slot.
	soon []*entry
	// ring is a snapshot of every entry, swept sweepPerTick at a time
	// from next; taken again when the sweep reaches its end.
	ring []*entry
	next int
}

func newSchedule() *schedule {
	return &schedule{sweep: sweepPerTick, items: make(map[*entry]*schedItem)}
}

// schedItem is one credential's place in the schedule.
type schedItem struct {
	e  *entry
	at time.Time
	// index in timers; -1 when the item has no time.
	index int
	// seen is the last tick that looked at the credential: once per tick,
	// as a started refresh shows as a flight only a little later.
	seen uint64
}

func (s *schedule) item(e *entry) *schedItem {
	it, ok := s.items[e]
	if !ok {
		it = &schedItem{e: e, index: -1}
		s.items[e] = it
	}
	return it
}

// setTime makes the heap look at it at at; zero removes it from the heap.
func (s *schedule) setTime(it *schedItem, at time.Time) {
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

// forget drops a credential the broker no longer has.
func (s *schedule) forget(it *schedItem) {
	s.setTime(it, time.Time{})
	delete(s.items, it.e)
}

// schedHeap orders items by time (container/heap).
type schedHeap []*schedItem

func (h schedHeap) Len() int           { return len(h) }
func (h schedHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h schedHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}

func (h *schedHeap) Push(x any) {
	it := x.(*schedItem)
	it.index = len(*h)
	*h = append(*h, it)
}

func (h *schedHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	it.index = -1
	*h = old[:len(old)-1]
	return it
}
