package life

import (
	"context"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rotavault/rotavault/internal/poll"
)

// Close ends the loops first, lets work finish within the grace period,
// and returns only once every goroutine has ended; nothing starts after.
func TestCloseEndsLoopsThenWaitsForWork(t *testing.T) {
	g := New(context.Background())
	loopEnded := make(chan struct{})
	workMayEnd := make(chan struct{})
	workEnded := make(chan struct{})
	g.Go(func() { <-g.Loops().Done(); close(loopEnded) })
	g.Go(func() { <-workMayEnd; close(workEnded) })

	closed := make(chan bool)
	go func() { closed <- g.Close(time.Hour, func() { t.Error("slow called within the grace period") }) }()
	<-loopEnded // the loop's context ended as Close began
	select {
	case <-closed:
		t.Fatal("Close returned while work was still running")
	default:
	}
	if g.Context().Err() != nil {
		t.Fatal("the work's context ended within the grace period")
	}
	close(workMayEnd)
	if !<-closed {
		t.Fatal("the first Close reported the group closed already")
	}
	select {
	case <-workEnded:
	default:
		t.Fatal("Close returned before the work ended")
	}
	if g.Go(func() { t.Error("ran after Close") }) || !g.Closed() || g.Close(time.Hour, nil) {
		t.Fatal("the group took work, or closed again, after Close")
	}
}

// Work still running after the grace period is told (slow) and its
// context is cancelled; Close still waits for it to end.
func TestCloseCancelsWorkPastTheGracePeriod(t *testing.T) {
	g := New(context.Background())
	ended := make(chan struct{})
	g.Go(func() { <-g.Context().Done(); close(ended) })
	slow := false
	if !g.Close(time.Millisecond, func() { slow = true }) {
		t.Fatal("Close reported the group closed already")
	}
	select {
	case <-ended:
	default:
		t.Fatal("Close returned before the work ended")
	}
	if !slow {
		t.Fatal("slow was not called for work past the grace period")
	}
}

// A function started once another has ended runs on the goroutine that
// ran it, whose stack has grown already, instead of on a new one; an idle
// goroutine ends with Close.
func TestWorkReusesAnIdleGoroutine(t *testing.T) {
	g := New(context.Background())
	ids := make(chan uint64, 1)
	ran := func() { ids <- goroutineID() }
	g.Go(ran)
	first := <-ids
	poll.Until(t, 5*time.Second, "a later function to run on the first one's goroutine", func() bool {
		g.Go(ran)
		return <-ids == first
	})
	before := runtime.NumGoroutine()
	g.Close(time.Hour, nil)
	if after := runtime.NumGoroutine(); after >= before {
		t.Fatalf("%d goroutines after Close, %d before: the idle one did not end", after, before)
	}
}

// goroutineID is the calling goroutine's number, from its stack trace's
// first line ("goroutine 42 [running]:").
func goroutineID() uint64 {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	f := strings.Fields(string(buf))
	id, _ := strconv.ParseUint(f[1], 10, 64)
	return id
}
