package broker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/notice"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/broker/pacing"
	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/fositeserver"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/store/memstore"
)

// setupCutoffReplicas starts two replicas sharing one store and one fake
// clock, with credential "x" at a generic provider whose access tokens live
// 20 s, imported on the first replica (one refresh).
func setupCutoffReplicas(t *testing.T, prev credspec.PreviousAccess) (a, b *Broker, clk *fakeclock.Clock) {
	t.Helper()
	url, _ := shortLivedProvider(t, 20*time.Second)
	clk = fakeclock.New(time.Now())
	st := memstore.New()
	opts := replicaOpts(clk, option.WithNoticePollInterval(10*time.Millisecond))
	a, b = newTestBroker(t, st, opts...), newTestBroker(t, st, opts...)
	ctx := context.Background()
	spec := credspec.Spec{ProviderKind: credspec.ProviderOAuth2, TokenURL: url, ClientID: "c", ClientSecret: "s", PreviousAccessToken: prev}
	if _, err := a.Credentials().Create(ctx, "x", spec); err != nil {
		t.Fatal(err)
	}
	if _, err := a.ImportRefreshToken(ctx, "x", "rt-0"); err != nil {
		t.Fatal(err)
	}
	awaitFollowed(t, b)
	return a, b, clk
}

// awaitFollowed waits until b's notice follower has applied every notice
// logged so far, so a late one cannot refresh b's cache behind a test's back.
func awaitFollowed(t *testing.T, b *Broker) {
	t.Helper()
	head, err := b.notices.Head(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "the notice follower to catch up", func() bool {
		return b.notices.Delivered() >= head
	})
}

func mustToken(t *testing.T, b *Broker, req access.Request) access.Token {
	t.Helper()
	if req.CredentialID == "" {
		req.CredentialID = "x"
	}
	tok, err := b.GetAccessToken(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// A 20 s token is rotated on schedule 13 s after its refresh (2 s ahead of
// the 5 s margin): every replica stops handing it out at the same cutoff,
// 500 ms earlier, although its cached copy is unexpired, and its callers
// get the rotation's result instead — at a provider that kills the previous
// access token a replica serving its cache until expiry − margin handed out
// dead tokens for 2 s per rotation.
func TestCutoffStopsEveryReplicaBeforeTheScheduledRotation(t *testing.T) {
	a, b, clk := setupCutoffReplicas(t, credspec.PreviousAccessDefault)
	first := mustToken(t, b, access.Request{}) // b caches it
	wantCutoff := first.IssuedAt.Add(13*time.Second - 500*time.Millisecond)
	if !first.UseUntil.Equal(wantCutoff) {
		t.Fatalf("use_until %s after issue, want the cutoff %s", first.UseUntil.Sub(first.IssuedAt), wantCutoff.Sub(first.IssuedAt))
	}
	clk.Add(wantCutoff.Add(-time.Millisecond).Sub(clk.Now()))
	if tok := mustToken(t, b, access.Request{}); tok.Token != first.Token {
		t.Fatal("the token was replaced before its cutoff")
	}
	clk.Add(wantCutoff.Sub(clk.Now()))
	rotated := mustToken(t, a, access.Request{}) // a's caller past the cutoff rotates
	if rotated.Token == first.Token || rotated.Generation != first.Generation+1 {
		t.Fatalf("a past the cutoff: generation %d, want a rotation to %d", rotated.Generation, first.Generation+1)
	}
	got := mustToken(t, b, access.Request{}) // b's cache still holds the old one
	if got.Token != rotated.Token {
		t.Fatalf("b handed out generation %d past the cutoff, want %d (the rotation's result)", got.Generation, rotated.Generation)
	}
	if n := b.Stats().CutoffWaits; n != 1 {
		t.Errorf("b CutoffWaits = %d, want 1", n)
	}
	if n := a.Stats().OffScheduleRotations; n != 0 {
		t.Errorf("a rotation at the cutoff was announced as off the schedule (%d)", n)
	}
}

// A provider that keeps the previous access token alive has no cutoff: the
// token serves until expiry − margin and says so.
func TestNoCutoffWhenTheProviderKeepsThePreviousAccessToken(t *testing.T) {
	_, b, clk := setupCutoffReplicas(t, credspec.PreviousAccessKept)
	first := mustToken(t, b, access.Request{})
	if want := first.ExpiresAt.Add(-5 * time.Second); !first.UseUntil.Equal(want) {
		t.Fatalf("use_until %s before expiry, want 5s (the margin)", first.ExpiresAt.Sub(first.UseUntil))
	}
	clk.Add(first.ExpiresAt.Add(-5 * time.Second).Sub(clk.Now()))
	if tok := mustToken(t, b, access.Request{}); tok.Token != first.Token || b.Stats().CutoffWaits != 0 {
		t.Fatal("a token of a provider keeping previous access tokens was cut off")
	}
}

// A rotation off the schedule (here a min_remaining beyond the fresh
// window) is announced to the other replicas, which stop handing out the
// old token within a notice poll; watchers never see the announcement.
func TestOffScheduleRotationReachesTheOtherReplica(t *testing.T) {
	a, b, clk := setupCutoffReplicas(t, credspec.PreviousAccessDefault)
	ctx := context.Background()
	first := mustToken(t, b, access.Request{})
	sub, err := b.Subscribe(ctx, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	clk.Add(11 * time.Second) // past the 10 s rotation floor, before the 12.5 s cutoff
	rotated := mustToken(t, a, access.Request{MinRemaining: 12 * time.Second})
	if rotated.Generation != first.Generation+1 {
		t.Fatalf("min_remaining did not rotate: generation %d", rotated.Generation)
	}
	if n := a.Stats().OffScheduleRotations; n != 1 {
		t.Fatalf("OffScheduleRotations = %d, want 1", n)
	}
	poll.UntilSeen(t, 10*time.Second, "b to stop handing out the rotated-away token", func() (bool, string) {
		tok := mustToken(t, b, access.Request{})
		return tok.Token == rotated.Token, tok.Fingerprint
	})
	// The next notice a watcher sees is the revocation, not the rotation.
	if _, err := a.RevokeCredential(ctx, "x", "test"); err != nil {
		t.Fatal(err)
	}
	nctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := sub.Next(nctx)
	if err != nil {
		t.Fatal(err)
	}
	if n.Kind != notice.FamilyRevoked {
		t.Fatalf("watcher got notice kind %d, want the revocation (%d)", n.Kind, notice.FamilyRevoked)
	}
}

// While this replica presents the refresh token, its callers do not get
// the access token the rotation may kill: they wait for the result.
func TestCallersWaitWhileTheirReplicaRotates(t *testing.T) {
	a, _, clk := setupCutoffReplicas(t, credspec.PreviousAccessDefault)
	first := mustToken(t, a, access.Request{})
	e, err := a.entry(context.Background(), "x")
	if err != nil {
		t.Fatal(err)
	}
	done := e.presentingAt(e.view.Load())
	if e.presenting.Load() == 0 {
		t.Fatal("no presentation marked for a provider that kills previous access tokens")
	}
	defer done()
	clk.Add(time.Second)
	if tok := mustToken(t, a, access.Request{}); tok.Generation != first.Generation+1 {
		t.Fatalf("handed out generation %d while it was being rotated, want the rotation's result %d", tok.Generation, first.Generation+1)
	}
	if n := a.Stats().CutoffWaits; n != 1 {
		t.Errorf("CutoffWaits = %d, want 1", n)
	}
}

func TestCutoffAllowanceAndState(t *testing.T) {
	for _, c := range []struct{ life, want time.Duration }{
		{5 * time.Second, 125 * time.Millisecond},
		{20 * time.Second, 500 * time.Millisecond},
		{time.Hour, 500 * time.Millisecond},
	} {
		if got := pacing.CutoffAllowance(c.life); got != c.want {
			t.Errorf("pacing.CutoffAllowance(%s) = %s, want %s", c.life, got, c.want)
		}
	}
	now := time.Now()
	f := &family.Record{Status: family.StatusActive}
	if s := f.StateAt(now, now); s != family.StateCutOff {
		t.Errorf("idle family at its cutoff: %s, want cut_off", s)
	}
	if s := f.StateAt(now.Add(time.Second), now); s != family.StateActive {
		t.Errorf("idle family before its cutoff: %s, want active", s)
	}
	if s := f.StateAt(time.Time{}, now); s != family.StateActive {
		t.Errorf("no cutoff: %s, want active", s)
	}
	if !family.Allowed(family.StateCutOff, family.EvClaim, family.StateClaimed) {
		t.Error("the table does not let a cut-off family be claimed")
	}
	var ie *brokererr.InvalidArgumentError
	if err := (credspec.Spec{ProviderKind: credspec.ProviderOAuth2, TokenURL: "https://p.example/t", ClientID: "c", PreviousAccessToken: "sometimes"}).Validate(); !errors.As(err, &ie) {
		t.Errorf("previous_access_token %q accepted: %v", "sometimes", err)
	}
}

// A family past its cutoff is an active record: the table lets it through
// exactly the stored events it lets an active family through.
func TestCutOffAllowsWhatActiveAllows(t *testing.T) {
	for ev := range family.NumEvents {
		if ev == family.EvReachCutoff || ev == family.EvNotePreviousAccess {
			continue // the event into cut_off, and one never recorded past a cutoff
		}
		for to := range family.NumStates {
			if family.Allowed(family.StateActive, ev, to) != family.Allowed(family.StateCutOff, ev, to) {
				t.Errorf("%s --%s--> %s: active %v, cut_off %v", "x", ev, to, family.Allowed(family.StateActive, ev, to), family.Allowed(family.StateCutOff, ev, to))
			}
		}
	}
}

// Without previous_access_token configured, a generic provider with an
// introspection endpoint is asked, right after a rotation, about the access
// token the rotation replaced: ory/fosite kills it (the cutoff stays), the
// simulator keeps it (the cutoff goes, for every replica reading the
// family).
func TestPreviousAccessTokenDetectedAfterARotation(t *testing.T) {
	ctx := context.Background()
	fs, err := fositeserver.Start(fositeserver.Config{AccessTokenLifespan: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fs.Close() })
	fs.AddClient("c", "s", []string{"http://127.0.0.1/cb"})
	sim := startSim(t, providersim.Config{})
	fositeRT, err := fs.IssueRefreshToken(ctx, "c", "s", "http://127.0.0.1/cb", []string{"offline", "api"})
	if err != nil {
		t.Fatal(err)
	}
	simRT, _ := sim.IssueRefreshToken("c", nil)
	for _, c := range []struct {
		name        string
		spec        credspec.Spec
		rt          string
		want        credspec.PreviousAccess
		wantCutoffs bool
	}{
		{"fosite", credspec.Spec{ProviderKind: credspec.ProviderOAuth2, TokenURL: fs.TokenURL(), IntrospectionURL: fs.IntrospectionURL(), ClientID: "c", ClientSecret: "s", Scopes: []string{"offline", "api"}},
			fositeRT, credspec.PreviousAccessRevoked, true},
		{"simulator", credspec.Spec{ProviderKind: credspec.ProviderOAuth2, TokenURL: sim.URL() + "/services/oauth2/token", IntrospectionURL: sim.URL() + "/services/oauth2/introspect", ClientID: "c", ClientSecret: "s", Scopes: []string{"api", "refresh_token"}},
			simRT, credspec.PreviousAccessKept, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := newTestBroker(t, memstore.New(), option.WithSchedulerInterval(time.Hour), option.WithIntrospectionInterval(0))
			if _, err := b.Credentials().Create(ctx, "g", c.spec); err != nil {
				t.Fatal(err)
			}
			if _, err := b.ImportRefreshToken(ctx, "g", c.rt); err != nil {
				t.Fatal(err)
			}
			first := mustToken(t, b, access.Request{CredentialID: "g"})
			e, err := b.entry(ctx, "g")
			if err != nil {
				t.Fatal(err)
			}
			// A rotation while the first token is alive (as a min_remaining
			// beyond the fresh window would make one).
			if _, err := b.refresh(ctx, e, nil, func(v *view) bool { return v.fam.Generation == first.Generation }); err != nil {
				t.Fatal(err)
			}
			poll.UntilSeen(t, 10*time.Second, "the previous access token's fate recorded", func() (bool, string) {
				v, err := b.readView(ctx, "g")
				if err != nil {
					return false, err.Error()
				}
				e.setView(v)
				return v.fam.PreviousAccess == c.want, string(v.fam.PreviousAccess)
			})
			if got := !b.timing(e.view.Load()).Cutoff().IsZero(); got != c.wantCutoffs {
				t.Errorf("cutoff after detection: %v, want %v", got, c.wantCutoffs)
			}
		})
	}
}
