package broker

import (
	"context"
	"fmt"
	"runtime"
	"slices"
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
// once a first tick has placed every credential (loading woke them), the
// scheduler refreshes each of them when the clock passes its refresh time,
// and none before, without looking at the others.
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
		t.Fatalf("the first tick placed %d credentials in the timer heap, want %d", sched.Timed(), n)
	}
	clk.Add(time.Hour)
	// Four slots per token endpoint: the others follow on later ticks.
	poll.Until(t, 10*time.Second, fmt.Sprintf("%d scheduled refreshes", n), func() bool {
		b.refreshDue(ctx, slots, sched)
		return ts.served.Load()-before >= n
	})
}

// seedIdleEntries puts n credentials straight into b's memory, bypassing
// the store and the provider (the scheduler reads only memory), and wakes
// them in the scheduler as installing them does: active families whose
// tokens have an hour left, every other one in use. None is due.
func seedIdleEntries(b *Broker, n int) {
	now := b.opts.Now()
	b.entriesMu.Lock()
	defer b.entriesMu.Unlock()
	for i := range n {
		id := fmt.Sprintf("cred-%d", i)
		cred := &family.Credential{Format: recordFormat, ID: id, Spec: credspec.Spec{ProviderKind: credspec.ProviderOAuth2, TokenURL: "https://provider.test/token", ClientID: "c"}}
		fam := &family.Record{Format: recordFormat, Status: family.StatusActive, Generation: 1, StartedAt: now, LastRefreshAt: now,
			Access: &family.AccessToken{Token: "at", Type: "Bearer", IssuedAt: now, ExpiresAt: now.Add(time.Hour)}}
		e := &entry{id: id, wakes: &b.wakes}
		e.view.Store(b.newView(cred, 1, fam, 1))
		e.used.Store(i%2 == 0)
		b.entries[id] = e
		e.wake()
	}
}

// newIdleBroker returns a broker, its own scheduler idle, holding n
// credentials put in by seedIdleEntries.
func newIdleBroker(b *testing.B, n int) *Broker {
	br, err := New(context.Background(), Config{Store: memstore.New(), Provider: provider.New(nil), Auditor: &recordingAuditor{}},
		option.WithSchedulerInterval(time.Hour))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = br.Close() })
	seedIdleEntries(br, n)
	return br
}

// BenchmarkSchedulerTick measures one scheduler tick with nothing due, at
// 1,000 and at 100,000 credentials, in one run: the goal is at most 1.5×
// the cost at 100,000 of that at 1,000. Each size ticks b.N times after a
// first tick has placed every credential in the timer heap, in batches of
// 100 ticks alternating between the sizes, so that load from elsewhere on
// the machine falls on both alike; each figure is the median batch.
func BenchmarkSchedulerTick(b *testing.B) {
	type setup struct {
		br    *Broker
		sched *schedule.Schedule[*entry]
		slots *schedule.Slots
		batch []float64
	}
	ctx := context.Background()
	place := func(n int) *setup {
		br := newIdleBroker(b, n)
		s := &setup{br: br, sched: schedule.New[*entry](), slots: schedule.NewSlots(maxScheduledRefreshes, maxScheduledPerEndpoint)}
		br.refreshDue(ctx, s.slots, s.sched) // every credential woken, placed once
		if s.sched.Timed() != n {
			b.Fatalf("%d of %d credentials in the timer heap", s.sched.Timed(), n)
		}
		return s
	}
	small, large := place(1000), place(100_000)
	runtime.GC() // the seeding's garbage is not collected during the ticks
	const batch = 100
	for done := 0; done < b.N; done += batch {
		for _, s := range []*setup{small, large} {
			start := time.Now()
			for range min(batch, b.N-done) {
				s.br.refreshDue(ctx, s.slots, s.sched)
			}
			s.batch = append(s.batch, float64(time.Since(start).Nanoseconds())/float64(min(batch, b.N-done)))
		}
	}
	for _, s := range []*setup{small, large} {
		if n := s.slots.InFlight(); n != 0 {
			b.Fatalf("%d refreshes started; none was due", n)
		}
	}
	median := func(xs []float64) float64 {
		slices.Sort(xs)
		return xs[len(xs)/2]
	}
	perSmall, perLarge := median(small.batch), median(large.batch)
	b.ReportMetric(perSmall, "ns/tick-1000")
	b.ReportMetric(perLarge, "ns/tick-100000")
	b.ReportMetric(perLarge/perSmall, "tick-100000/tick-1000")
}

// refreshDue runs one scheduler tick, as the broker's loop does.
func (b *Broker) refreshDue(ctx context.Context, slots *schedule.Slots, sched *schedule.Schedule[*entry]) {
	b.scheduler().Tick(ctx, sched, slots)
}
