// Package schedule is the proactive-refresh scheduler's bookkeeping: which
// credentials to look at on a tick (those whose time has come, those put
// off to the next tick, and those the rest of the broker woke because
// something changed when they are due) and how many scheduled refreshes
// are in flight. The rotation core decides whether a credential is due
// and runs its refresh; this package only orders the looks. A Schedule
// belongs to the scheduler's goroutine: not safe for concurrent use.
// Wakes and Slots are.
package schedule

import (
	"container/heap"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// Schedule is the scheduler's own state, keyed by credential (K).
type Schedule[K comparable] struct {
	tick uint64
	// items are the credentials with a place: every change that can make
	// one due sooner wakes it (Wakes), so a tick with nothing due or woken
	// costs a heap peek whatever the number of credentials.
	items map[K]*item[K]
	// timers holds the items with a time to look at them again, earliest
	// first.
	timers timerHeap[K]
	// soon are looked at on the next tick: refreshes in flight or just
	// started, credentials that found no free slot.
	soon []K
	// looks is the buffer a tick gathers what it looks at into.
	looks []K
	// tracked, when set, receives Tracked after each tick.
	tracked *atomic.Int64
}

// New returns an empty schedule.
func New[K comparable]() *Schedule[K] {
	return &Schedule[K]{items: make(map[K]*item[K])}
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

// Tick looks, through check, at the credentials woken since the last tick
// (wakes may be nil), those whose time in the schedule has come at now,
// and those it meant to look at again on this tick. A check returning
// false ends the tick.
func (s *Schedule[K]) Tick(now time.Time, wakes *Wakes[K], check func(k K) bool) {
	s.tick++
	if s.tracked != nil {
		defer func() { s.tracked.Store(int64(s.Tracked())) }()
	}
	// Everything this tick looks at is taken before it looks at any: what
	// a look defers (Soon, At now or earlier) goes to the next tick, a
	// change made while this tick looks wakes its credential for the
	// next, and a credential taken twice is looked at once (FirstLook)
	// unless its first look forgot it (At with no time).
	looks := wakes.take(s.looks)
	for len(s.timers) > 0 && !s.timers[0].at.After(now) {
		it := s.timers[0]
		s.setTime(it, time.Time{})
		looks = append(looks, it.k)
	}
	looks = append(looks, s.soon...)
	clear(s.soon)
	s.soon = s.soon[:0]
	s.looks = looks
	defer clear(looks) // no credential kept alive by the buffer
	for _, k := range looks {
		if !check(k) {
			return
		}
	}
}

// Wakes collects the credentials whose due time may have moved since the
// scheduler last looked: the events that move it happen in other parts
// of the broker and wake the credential here, and the next Tick looks at
// each woken credential once. A credential woken many times between two
// ticks is held once: Wakes holds at most one key per credential. Safe
// for concurrent use; a nil *Wakes wakes nothing. The zero value is ready
// to use.
type Wakes[K comparable] struct {
	mu   sync.Mutex
	set  map[K]struct{}
	list []K
}

// Wake makes the next tick look at k. Called after the change it reports
// is visible, so that the look sees it: the tick takes the wakes before
// it looks, and a change made after that wakes k for the tick after.
func (w *Wakes[K]) Wake(k K) {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.set[k]; ok {
		return
	}
	if w.set == nil {
		w.set = make(map[K]struct{})
	}
	w.set[k] = struct{}{}
	w.list = append(w.list, k)
}

// Pending is how many credentials are woken and not yet taken by a tick.
func (w *Wakes[K]) Pending() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.list)
}

// take moves the woken credentials into buf (reused) and empties w.
func (w *Wakes[K]) take(buf []K) []K {
	buf = buf[:0]
	if w == nil {
		return buf
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.list) == 0 {
		return buf
	}
	buf = append(buf, w.list...)
	clear(w.list)
	w.list = w.list[:0]
	// A new set rather than clear: clearing a map costs its capacity,
	// which a burst of wakes (a replica loading every credential) leaves
	// large, and the next empty tick would pay for it.
	w.set = nil
	return buf
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

// At makes the schedule look at k again at at. Zero: only when woken; the
// schedule then keeps nothing of k, so that a credential
// dropped without a time to look at it leaves nothing behind.
func (s *Schedule[K]) At(k K, at time.Time) {
	if at.IsZero() {
		s.Forget(k)
		return
	}
	s.setTime(s.item(k), at)
}

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
		// In place already: most looks find nothing new.
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

// Endpoint names a token endpoint by scheme and host (with port): the unit
// a hanging provider takes down, which Slots bound.
func Endpoint(tokenURL string) string {
	u, err := url.Parse(tokenURL)
	if err != nil {
		return ""
	}
	return u.Scheme + "://" + u.Host
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
