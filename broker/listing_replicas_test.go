package broker

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/vaultstore"
)

// Two replicas on one Vault path: a credential created or deleted on one
// shows in the other's ListCredentials once that replica's listing of the
// folder is older than ListRefresh (no notice tells it: a creation has
// none, nor has the deletion of a family that is not active), and at once
// in its own.
func TestListCredentialsShowsAnotherReplicasChangesWithinListRefresh(t *testing.T) {
	srv := vaulttest.StartDev(t)
	const refresh = time.Minute
	listClock := fakeclock.New(time.Now())
	open := func(now func() time.Time) *vaultstore.Store {
		vs, err := vaultstore.New(context.Background(), vaultstore.Config{Client: srv.Client(t), ListRefresh: refresh, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = vs.Close() })
		return vs
	}
	clk := fakeclock.New(time.Now())
	sim := startSim(t, providersim.Config{Now: clk.Now})
	a := newTestBroker(t, open(nil), replicaOpts(clk)...)
	b := newTestBroker(t, open(listClock.Now), replicaOpts(clk)...)
	ctx := t.Context()
	ids := func(br *Broker) []string {
		t.Helper()
		page, _, err := br.Credentials().List(ctx, "", 10)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, c := range page {
			out = append(out, c.ID)
		}
		return out
	}
	want := func(what string, br *Broker, expect ...string) {
		t.Helper()
		if got := ids(br); !slices.Equal(got, expect) {
			t.Fatalf("%s: %q, want %q", what, got, expect)
		}
	}
	if _, err := a.Credentials().Create(ctx, "one", simSpec(sim)); err != nil {
		t.Fatal(err)
	}
	want("b's first listing", b, "one")
	if _, err := a.Credentials().Create(ctx, "two", simSpec(sim)); err != nil {
		t.Fatal(err)
	}
	if err := a.Credentials().Delete(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	want("a's own changes, at once", a, "two")
	t.Logf("b within the refresh period: %q", ids(b)) // may lag: "one"
	listClock.Add(refresh)
	want("b past the refresh period", b, "two")
}
