package broker

import (
	"context"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/notice"
)

// The README: "A notice reaches watchers connected to *other* replicas
// through the shared notice log, within one --notice-poll-interval". A
// family installed on a reaches b's watcher in the first poll b begins
// after the call returned. b's polls are stepped, and the next one is held
// while the watcher is read: nothing else can hand it the notice.
func TestNoticeReachesAnotherReplicasWatcherWithinOnePoll(t *testing.T) {
	a, b, bPolls, sim := listingReplicas(t)
	ctx := t.Context()
	if _, err := a.Credentials().Create(ctx, "one", simSpec(sim)); err != nil {
		t.Fatal(err)
	}
	watcher, err := b.Subscribe(ctx, []string{"one"}, "")
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close()
	bPolls.start(t)
	rt, err := sim.IssueRefreshToken("c", nil)
	if err != nil {
		t.Fatal(err)
	}
	act, err := a.ImportRefreshToken(ctx, "one", rt)
	if err != nil {
		t.Fatal(err)
	}
	bPolls.one(t)
	nctx, cancel := context.WithTimeout(ctx, 10*time.Second) // a bound on a wait: the notice is there or never comes
	defer cancel()
	n, err := watcher.Next(nctx)
	if err != nil {
		t.Fatalf("b's watcher after one poll: %v", err)
	}
	if n.Kind != notice.FamilyActivated || n.FamilyID != act.FamilyID {
		t.Errorf("b's watcher got %+v, want the activation of family %s", n, act.FamilyID)
	}
}
