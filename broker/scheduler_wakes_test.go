package broker

import (
	"context"
	"errors"
	"fmt"
	"github.com/rotavault/rotavault/broker/family"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/internal/schedule"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/store/memstore"
)

// The scheduler looks at nothing but the credentials whose time in its
// timer heap has come and those something woke (there is no sweep): each
// test below moves a credential's due time earlier than the heap holds by
// one kind of event, and the credential is refreshed on the next tick.

// ticker drives a scheduler of its own on b, one tick per call.
type ticker struct {
	b     *Broker
	sched *schedule.Schedule[*entry]
	slots *schedule.Slots
}

func newTicker(b *Broker) *ticker {
	return &ticker{b: b, sched: schedule.New[*entry](), slots: schedule.NewSlots(maxScheduledRefreshes, maxScheduledPerEndpoint)}
}

func (tk *ticker) tick(ctx context.Context) { tk.b.refreshDue(ctx, tk.slots, tk.sched) }

// untilRefreshed ticks until ts has answered a refresh since before.
func (tk *ticker) untilRefreshed(t *testing.T, ts *tokenServer, before int32, what string) {
	t.Helper()
	poll.Until(t, 10*time.Second, what, func() bool {
		tk.tick(context.Background())
		return ts.served.Load()-before >= 1
	})
}

// importCredential creates id at ts and imports a refresh token (its
// proving refresh is the server's first answer).
func importCredential(t *testing.T, b *Broker, ts *tokenServer, id string) *entry {
	t.Helper()
	ctx := context.Background()
	spec := credspec.Spec{ProviderKind: credspec.ProviderOAuth2, TokenURL: ts.URL, ClientID: "c",
		PreviousAccessToken: credspec.PreviousAccessKept} // no cutoff: callers are served until expiry − margin
	if _, err := b.Credentials().Create(ctx, id, spec); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ImportRefreshToken(ctx, id, "rt-0"); err != nil {
		t.Fatal(err)
	}
	e, err := b.entry(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// A token nobody used is not refreshed ahead of expiry; its first use in
// the refresh-ahead window makes it due at once, and the scheduler, which
// had nothing more to look at it for, is woken by that use.
func TestFirstUseInTheRefreshWindowWakesTheScheduler(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(time.Now())
	b := newTestBroker(t, memstore.New(), option.WithClock(clk.Now), option.WithSchedulerInterval(time.Hour), option.WithIntrospectionInterval(0))
	ts := startTokenServer(t, time.Hour)
	e := importCredential(t, b, ts, "x")
	tk := newTicker(b)
	tk.tick(ctx) // placed at its refresh time
	clk.Add(b.timing(e.view.Load()).AccessDue().Sub(clk.Now()) + time.Second)
	before := ts.served.Load()
	tk.tick(ctx) // its time: unused, so not due, and nothing to wait for
	if got := ts.served.Load() - before; got != 0 {
		t.Fatalf("%d refreshes of a token nobody used", got)
	}

	tok, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if got := ts.served.Load() - before; got != 0 || tok.Token != "at-1" {
		t.Fatalf("the first use refreshed (%d) or was not served from the cache (%q)", got, tok.Token)
	}
	tk.untilRefreshed(t, ts, before, "the scheduled refresh after the first use")
}

// A family another replica writes that is due sooner than the one this
// replica placed in its heap (here: imported there while the provider was
// down, so due at once, by whichever replica) is refreshed on this
// replica's next tick after the notice brings it here.
func TestAnotherReplicasFamilyDueSoonerWakesTheScheduler(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(time.Now())
	st := memstore.New()
	ts := startTokenServer(t, time.Hour)
	opts := []option.Option{option.WithClock(clk.Now), option.WithSchedulerInterval(time.Hour), option.WithIntrospectionInterval(0),
		option.WithRetryBase(time.Millisecond), option.WithRefreshTimeout(200 * time.Millisecond), option.WithNoticePollInterval(10 * time.Millisecond)}
	a := newTestBroker(t, st, append(opts, option.WithReplicaID("replica-a"))...)
	b := newTestBroker(t, st, append(opts, option.WithReplicaID("replica-b"))...)
	importCredential(t, a, ts, "x")
	if _, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x"}); err != nil {
		t.Fatal(err)
	}
	eb, err := b.entry(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	tk := newTicker(b)
	tk.tick(ctx) // placed at its refresh time, most of an hour away

	ts.hang.Store(true)
	if _, err := a.ImportRefreshToken(ctx, "x", "rt-new"); err != nil {
		t.Fatal(err) // stored unproven: the proving refresh is owed
	}
	ts.hang.Store(false)
	poll.Until(t, 10*time.Second, "replica b sees the unproven family", func() bool {
		v := eb.view.Load()
		return v.fam.RefreshToken == "rt-new" && v.fam.Access == nil
	})
	before := ts.served.Load()
	tk.untilRefreshed(t, ts, before, "replica b's scheduler proves the family")
}

// A rotation a caller's refresh could not store is held in memory and
// written on the next tick once the store answers, not when the
// credential's refresh time comes. (Two wakes lead here: the claim's view,
// which has the scheduler follow the refresh in flight tick by tick, and
// the rescue itself; removing one alone does not fail this test.)
func TestHeldRotationWakesTheScheduler(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(time.Now())
	fs := &faultStore{Store: memstore.New()}
	b := newTestBroker(t, fs, option.WithClock(clk.Now), option.WithSchedulerInterval(time.Hour), option.WithIntrospectionInterval(0),
		option.WithRetryBase(time.Millisecond), option.WithRefreshTimeout(200*time.Millisecond))
	ts := startTokenServer(t, time.Hour)
	e := importCredential(t, b, ts, "x")
	tk := newTicker(b)
	tk.tick(ctx)

	remove := fs.inject(&fault{op: "put", prefix: "families/", fail: errors.New("store down"), match: func(_ string, value []byte) bool {
		var f family.Record
		return decodeRecord(value, &f, &f.Format) == nil && f.Claim == nil // the result, not the claim
	}})
	// Past the rotation floor (half the lifetime), 29 minutes left, the
	// refresh time (about 54 minutes in) still ahead: a caller wanting 40
	// minutes refreshes.
	clk.Add(31 * time.Minute)
	if tok, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x", MinRemaining: 40 * time.Minute}); err == nil {
		t.Fatalf("served %q while the rotated family could not be stored (served %d)", tok.Token, ts.served.Load())
	}
	if e.rescue.Load() == nil {
		t.Fatal("no rotation held in memory")
	}
	remove()
	poll.Until(t, 10*time.Second, "the held rotation stored by the scheduler", func() bool {
		tk.tick(ctx)
		return e.rescue.Load() == nil
	})
	rec, err := fs.Get(ctx, e.view.Load().cred.FamilyKey())
	if err != nil {
		t.Fatal(err)
	}
	var f family.Record
	if err := decodeRecord(rec.Value, &f, &f.Format); err != nil || f.Generation != 2 {
		t.Fatalf("stored generation %d (%v), want the held rotation's 2", f.Generation, err)
	}
}

// An idle refresh that came due while another replica held the
// credential's shard is done here once the shard comes here (the other
// replica left), not never: gaining a shard wakes its credentials.
func TestGainedShardWakesTheScheduler(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(time.Now())
	st := memstore.New()
	ts := startTokenServer(t, time.Hour)
	opts := []option.Option{option.WithClock(clk.Now), option.WithSchedulerInterval(time.Hour), option.WithIntrospectionInterval(0), option.WithDutyLeasePeriod(dutyTestPeriod)}
	a := newTestBroker(t, st, append(opts, option.WithReplicaID("replica-a"))...)
	b := newTestBroker(t, st, append(opts, option.WithReplicaID("replica-b"))...)
	poll.Until(t, 10*time.Second, "two replicas share the duties", func() bool { return settledDuties(a, b) })
	id := ""
	for i := 0; id == ""; i++ {
		if c := fmt.Sprintf("idle-%d", i); b.owns(c) {
			id = c
		}
	}
	// Nobody uses the token: only the idle timeout makes it due.
	if _, err := a.Credentials().Create(ctx, id, credspec.Spec{ProviderKind: credspec.ProviderOAuth2, TokenURL: ts.URL, ClientID: "c", RefreshIdle: 2 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.ImportRefreshToken(ctx, id, "rt-0"); err != nil {
		t.Fatal(err)
	}
	tk := newTicker(a)
	tk.tick(ctx)
	before := ts.served.Load()
	clk.Add(time.Hour + time.Minute) // past half the idle timeout: b's duty
	tk.tick(ctx)
	if got := ts.served.Load() - before; got != 0 || !b.owns(id) {
		t.Fatalf("replica a refreshed %d times a credential whose shard b holds (%v)", got, b.owns(id))
	}

	_ = b.Close() // leaves the lease table: a takes b's shards at once
	tk.untilRefreshed(t, ts, before, "the idle refresh done by replica a")
}
