// Package fakeclock is the tests' clock: it stands still until a test moves
// it, so timing in a test is what the test says, never what the machine's
// load makes of it.
package fakeclock

import (
	"sync"
	"time"
)

// Clock is a clock that only moves when told to. Safe for concurrent use;
// create it with New (the zero value stands at the zero time).
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// New returns a clock standing at start.
func New(start time.Time) *Clock { return &Clock{t: start} }

// Now returns the clock's time; pass the method value (c.Now) where a
// func() time.Time is wanted.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Add moves the clock by d.
func (c *Clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
