// Package life owns the goroutines of one broker: the loops that run
// for its whole life (the scheduler, early detection, the duty leases,
// the notice follower, ...) and the work it starts (refreshes,
// announcements), so that Close stops the loops, lets the work finish
// within a grace period, and returns only when every goroutine has ended.
package life

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Group is the owner of a broker's goroutines. Safe for concurrent use.
// Create it with New; a zero Group is not usable.
type Group struct {
	// ctx bounds the work the broker owns; Close cancels it last.
	ctx    context.Context
	cancel context.CancelFunc
	// loops ends the loops; Close cancels it first.
	loops     context.Context
	stopLoops context.CancelFunc
	// wg counts the functions given to Go that have not returned;
	// workers counts the goroutines running them or idle between them.
	wg      sync.WaitGroup
	workers sync.WaitGroup
	// idle hands a function to a worker waiting for one (unbuffered: a
	// send succeeds only when one waits).
	idle chan func()
	// mu orders Go against Close, so no goroutine is added to wg once
	// Close waits on it.
	mu     sync.Mutex
	closed atomic.Bool
}

// idleWorker is how long a goroutine that ran a function waits for the
// next one before it ends. A refresh runs deep call chains (an HTTP
// exchange, JSON records, a store commit) that grow a new goroutine's
// stack several times over, copying it each time: 2.5-11 % of a
// rotation's CPU in profiles, 1.3 % with goroutines kept for the next
// refresh, whose stacks have grown already. A second outlasts a burst's gaps; idle goroutines of
// a quiet broker end.
const idleWorker = time.Second

// New returns a group whose contexts carry parent's values, not its
// cancellation: only Close ends them.
func New(parent context.Context) *Group {
	g := &Group{idle: make(chan func())}
	g.ctx, g.cancel = context.WithCancel(context.WithoutCancel(parent))
	g.loops, g.stopLoops = context.WithCancel(g.ctx)
	return g
}

// Context bounds the work the group owns (a refresh in flight): it ends
// when Close gives up waiting, or returns.
func (g *Group) Context() context.Context { return g.ctx }

// Loops is the context of the loops: it ends when Close starts.
func (g *Group) Loops() context.Context { return g.loops }

// Go runs f in a goroutine Close waits for. It reports false, running
// nothing, once the group is closed.
func (g *Group) Go(f func()) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed.Load() {
		return false
	}
	g.wg.Add(1)
	select {
	case g.idle <- f:
	default:
		g.workers.Add(1)
		go g.work(f)
	}
	return true
}

// work runs f, then the functions Go hands it, until none comes within
// idleWorker or the group's context ends.
func (g *Group) work(f func()) {
	defer g.workers.Done()
	t := time.NewTimer(idleWorker)
	defer t.Stop()
	for {
		f()
		g.wg.Done()
		t.Reset(idleWorker)
		select {
		case f = <-g.idle:
		case <-t.C:
			return
		case <-g.ctx.Done():
			return
		}
	}
}

// Closed reports whether Close has been called.
func (g *Group) Closed() bool { return g.closed.Load() }

// Close ends the loops, waits up to grace for the other goroutines to
// finish, then (calling slow first, when they have not) cancels Context
// and waits for them to end. It reports false, doing nothing, when the
// group was closed already.
func (g *Group) Close(grace time.Duration, slow func()) bool {
	g.mu.Lock()
	already := g.closed.Swap(true)
	g.mu.Unlock()
	if already {
		return false
	}
	g.stopLoops()
	done := make(chan struct{})
	go func() {
		g.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(grace):
		slow()
		g.cancel()
		<-done
	}
	g.cancel()
	g.workers.Wait()
	return true
}
