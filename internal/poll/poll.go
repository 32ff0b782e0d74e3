// Package poll waits in tests for a condition another goroutine or process
// brings about: it polls, so it needs no hook in the code under test, and
// fails the test after a deadline that is generous because it bounds a
// wait, not a measurement.
package poll

import (
	"testing"
	"time"
)

// pollInterval is how often a condition is checked: short enough not to
// slow tests down, long enough not to busy a 2-core machine.
const pollInterval = 5 * time.Millisecond

// Until polls cond until it holds, failing t after timeout with what.
func Until(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	UntilSeen(t, timeout, what, func() (bool, string) { return cond(), "" })
}

// UntilSeen is Until for a check that also describes what it saw; the last
// description goes into the failure message.
func UntilSeen(t testing.TB, timeout time.Duration, what string, check func() (ok bool, seen string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		ok, seen := check()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			if seen != "" {
				t.Fatalf("%s: not within %s; last seen: %s", what, timeout, seen)
			}
			t.Fatalf("%s: not within %s", what, timeout)
		}
		<-tick.C
	}
}
