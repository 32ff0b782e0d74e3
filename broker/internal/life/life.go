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
	wg        sync.WaitGroup
	// mu orders Go against Close, so no goroutine is added to wg once
	// Close waits on it.
	mu     sync.Mutex
	closed atomic.Bool
}

// New returns a group whose contexts carry parent's values, not its
// cancellation: only Close ends them.
func New(parent context.Context) *Group {
	g := &Group{}
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
	go func() {
		defer g.wg.Done()
		f()
	}()
	return true
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
	return true
}
