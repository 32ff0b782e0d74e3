package schedule

import (
	"slices"
	"testing"
	"time"
)

// A tick looks at a credential woken several times once, and a look that
// puts a credential off to now (or earlier) has it looked at on the next
// tick: taken before any look, it is neither looked at twice in one tick
// nor dropped as already seen.
func TestTickLooksOnceAndKeepsWhatALookPutsOff(t *testing.T) {
	s := New[string]()
	var w Wakes[string]
	now := time.Now()
	var looked []string
	look := func(k string) bool {
		if s.FirstLook(k) {
			looked = append(looked, k)
			s.At(k, now) // due again at once
		}
		return true
	}
	w.Wake("a")
	w.Wake("b")
	w.Wake("a")
	if n := w.Pending(); n != 2 {
		t.Fatalf("%d pending wakes, want 2", n)
	}
	for tick := range 3 {
		looked = nil
		s.Tick(now, &w, look)
		slices.Sort(looked)
		if !slices.Equal(looked, []string{"a", "b"}) {
			t.Fatalf("tick %d looked at %v, want a and b once each", tick, looked)
		}
	}
	s.At("a", time.Time{})
	s.At("b", time.Time{})
	looked = nil
	s.Tick(now, &w, look)
	if len(looked) != 0 || s.Timed() != 0 || len(s.items) != 0 {
		t.Fatalf("looked at %v, %d timed, %d kept after both were taken off", looked, s.Timed(), len(s.items))
	}
}
