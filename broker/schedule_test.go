package broker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/internal/schedule"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store/memstore"
)

// installUsed creates n credentials at ts whose tokens are in use, so the
// scheduler refreshes them ahead of expiry.
func installUsed(t *testing.T, b *Broker, ts *tokenServer, n int) {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		id := fmt.Sprintf("cred-%d", i)
		if _, err := b.Credentials().Create(ctx, id, credspec.Spec{ProviderKind: credspec.ProviderOAuth2, TokenURL: ts.URL, ClientID: "c"}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.ImportRefreshToken(ctx, id, "rt-0"); err != nil {
			t.Fatal(err)
		}
		if _, err := b.GetAccessToken(ctx, access.Request{CredentialID: id}); err != nil {
			t.Fatal(err)
		}
	}
}

// The timer heap, not a scan, finds the credentials whose time has come:
// once a first sweep has placed every credential, a scheduler that sweeps
// nothing more still refreshes each of them when the clock passes its
// refresh time, and none before.
func TestSchedulerRefreshesWhenTheirTimeComesWithoutScanning(t *testing.T) {
	const n = 10
	clk := fakeclock.New(time.Now())
	// The background scheduler stays out of the way: the test ticks.
	b := newTestBroker(t, memstore.New(), option.WithClock(clk.Now), option.WithSchedulerInterval(time.Hour))
	ts := startTokenServer(t, time.Hour)
	installUsed(t, b, ts, n)
	before := ts.served.Load()

	sched := schedule.New[*entry]()
	slots := schedule.NewSlots(maxScheduledRefreshes, maxScheduledPerEndpoint)
	ctx := t.Context()
	b.refreshDue(ctx, slots, sched)
	if got := ts.served.Load() - before; got != 0 {
		t.Fatalf("%d refreshes before any token was due", got)
	}
	if sched.Timed() != n {
		t.Fatalf("the sweep placed %d credentials in the timer heap, want %d", sched.Timed(), n)
	}
	sched.Sweep = 0
	clk.Add(time.Hour)
	// Four slots per token endpoint: the others follow on later ticks.
	poll.Until(t, 10*time.Second, fmt.Sprintf("%d scheduled refreshes", n), func() bool {
		b.refreshDue(ctx, slots, sched)
		return ts.served.Load()-before >= n
	})
}

// seedIdleEntries puts n credentials straight into b's memory, bypassing
// the store and the provider (the scheduler reads only memory): active
// families whose tokens have an hour left, every other one in use. None is
// due.
func seedIdleEntries(b *Broker, n int) {
	now := b.opts.Now()
	b.entriesMu.Lock()
	defer b.entriesMu.Unlock()
	for i := range n {
		id := fmt.Sprintf("cred-%d", i)
		cred := &family.Credential{Format: recordFormat, ID: id, Spec: credspec.Spec{ProviderKind: credspec.ProviderOAuth2, TokenURL: "https://provider.test/token", ClientID: "c"}}
		fam := &family.Record{Format: recordFormat, Status: family.StatusActive, Generation: 1, StartedAt: now, LastRefreshAt: now,
			Access: &family.AccessToken{Token: "at", Type: "Bearer", IssuedAt: now, ExpiresAt: now.Add(time.Hour)}}
		e := &entry{id: id}
		e.view.Store(b.newView(cred, 1, fam, 1))
		e.used.Store(i%2 == 0)
		b.entries[id] = e
	}
}

// BenchmarkSchedulerTick measures one scheduler tick with nothing due, at
// 1,000 and at 100,000 credentials, in one run: the goal is at most 1.5×
// the cost at 100,000 of that at 1,000. Each figure averages b.N ticks,
// the sweep's periodic snapshot of every entry included.
func BenchmarkSchedulerTick(b *testing.B) {
	perTick := func(n int) float64 {
		br, err := New(context.Background(), Config{Store: memstore.New(), Provider: provider.New(nil), Auditor: &recordingAuditor{}},
			option.WithSchedulerInterval(time.Hour))
		if err != nil {
			b.Fatal(err)
		}
		defer br.Close()
		seedIdleEntries(br, n)
		sched := schedule.New[*entry]()
		slots := schedule.NewSlots(maxScheduledRefreshes, maxScheduledPerEndpoint)
		ctx := context.Background()
		for range n/sched.Sweep + 1 { // every credential placed once
			br.refreshDue(ctx, slots, sched)
		}
		if sched.Timed() != n {
			b.Fatalf("%d of %d credentials in the timer heap", sched.Timed(), n)
		}
		start := time.Now()
		for range b.N {
			br.refreshDue(ctx, slots, sched)
		}
		if n := slots.InFlight(); n != 0 {
			b.Fatalf("%d refreshes started; none was due", n)
		}
		return float64(time.Since(start).Nanoseconds()) / float64(b.N)
	}
	small := perTick(1000)
	large := perTick(100_000)
	b.ReportMetric(small, "ns/tick-1000")
	b.ReportMetric(large, "ns/tick-100000")
	b.ReportMetric(large/small, "tick-100000/tick-1000")
}
