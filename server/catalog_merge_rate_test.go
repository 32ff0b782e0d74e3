package server

import (
	"context"
	"log/slog"
	"testing"
	"time"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// A replica merges a credential whose consumers it has all merged before
// into the catalog once every catalog.Periods flush intervals (once per
// catalog.Slot), not at every flush: steady use of two credentials, flushed
// every minute for an hour, costs each credential 6 or 7 catalog writes
// instead of 60. A consumer
// the replica has not merged yet still goes at the next flush, and nothing
// counted is lost: a full flush lists every token.
func TestCatalogMergesKnownConsumersOncePerPeriod(t *testing.T) {
	e := newCatalogEnv(t)
	e.install("cred-a")
	e.install("cred-b")
	const interval = time.Minute
	c := newIssuanceCounter(nil, e.broker.Catalog(), interval, slog.New(slog.DiscardHandler))
	t.Cleanup(func() { c.close(context.Background()) })
	clock := time.Now()
	c.now = func() time.Time { return clock }
	flush := func() int64 {
		t.Helper()
		before := e.store.writes()
		if err := c.flushSome(testCtx(t), false, false); err != nil {
			t.Fatal(err)
		}
		return e.store.writes() - before
	}
	const alice, bob = "spiffe://example.org/alice", "spiffe://example.org/bob"

	c.add(alice, "cred-a")
	c.add(alice, "cred-b")
	if got := flush(); got != 2 {
		t.Fatalf("first flush: %d store writes, want 2 (each credential's consumer is new)", got)
	}
	tokens := map[string]uint64{"cred-a": 1, "cred-b": 1}
	writes := int64(0)
	for minute := 1; minute <= 60; minute++ {
		clock = clock.Add(interval)
		c.add(alice, "cred-a")
		c.add(alice, "cred-b")
		tokens["cred-a"]++
		tokens["cred-b"]++
		if minute == 30 {
			// A new consumer is merged at the next flush.
			c.add(bob, "cred-a")
			tokens["cred-a"]++
			before := writes
			writes += flush()
			if writes-before < 1 {
				t.Fatal("a new consumer waited for the period")
			}
			if got := e.list(&rotavaultv1.ListConsumersRequest{CredentialId: "cred-a"}).GetConsumers(); len(got) != 2 {
				t.Fatalf("cred-a lists %d consumers after the flush that met bob, want 2", len(got))
			}
			continue
		}
		writes += flush()
	}
	// Each credential: once in each of the 6 or 7 slots the hour meets, plus bob's merge.
	if writes < 2*6 || writes > 2*7+1 {
		t.Errorf("an hour of flushes every minute made %d catalog writes for 2 credentials, want 12 to 15 (60 each before)", writes)
	}
	if err := c.flushSome(testCtx(t), true, true); err != nil {
		t.Fatal(err)
	}
	counted := map[string]uint64{}
	for _, cons := range e.list(&rotavaultv1.ListConsumersRequest{}).GetConsumers() {
		counted[cons.GetCredentialId()] += cons.GetTokenCount()
	}
	if counted["cred-a"] != tokens["cred-a"] || counted["cred-b"] != tokens["cred-b"] {
		t.Errorf("catalog counts %v after a full flush, want %v", counted, tokens)
	}
}
