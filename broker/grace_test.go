package broker

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/notice"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/internal/syncbuf"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/memstore"
)

// A reuse grace period a claim cannot fit in is refused where it is set,
// and on the calls for a stored one a server's claim outgrew, with a
// reason a client can act on.
func TestReuseGraceTooShortIsRefused(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	b := newBroker(t, Config{Store: st, Provider: &scriptedProvider{}, Auditor: &recordingAuditor{}}, option.WithSchedulerInterval(time.Hour), option.WithIntrospectionInterval(0))
	spec := credspec.Spec{ProviderKind: credspec.ProviderOAuth2, TokenURL: "https://idp.example/token", ClientID: "c"}
	tooShort := func(err error) bool {
		var inv *brokererr.InvalidArgumentError
		return errors.As(err, &inv) && inv.Code == option.ReuseGraceTooShort && inv.Field == "spec.reuse_grace_period"
	}
	if got := option.MinReuseGrace(15 * time.Second); got != 20*time.Second {
		t.Fatalf("smallest grace with the default margin: %s, want 20s", got)
	}
	for _, tt := range []struct {
		grace   time.Duration
		refused bool
	}{{0, false}, {time.Second, true}, {19 * time.Second, true}, {20 * time.Second, false}, {time.Minute, false}} {
		s := spec
		s.ReuseGrace = tt.grace
		_, err := b.Credentials().Create(ctx, "g"+strings.ReplaceAll(tt.grace.String(), "s", ""), s)
		if tooShort(err) != tt.refused || (!tt.refused && err != nil) {
			t.Errorf("create with grace %s: %v, want refused %v", tt.grace, err, tt.refused)
		}
	}
	if _, err := b.Credentials().Update(ctx, "g20", []credspec.Field{credspec.FieldReuseGrace}, credspec.Spec{ReuseGrace: 10 * time.Second}); !tooShort(err) {
		t.Errorf("update to a 10s grace: %v, want REUSE_GRACE_TOO_SHORT", err)
	}
	// A replica with a longer claim margin cannot fit the stored 20 s: it
	// starts (the other credentials are served), loads g20, says so at
	// ERROR, and refuses its calls instead of rotating it.
	var logs syncbuf.Buffer
	b2 := newBroker(t, Config{Store: st, Provider: &scriptedProvider{}, Auditor: &recordingAuditor{}}, option.WithClaimTiming(90*time.Second, 30*time.Second),
		option.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))), option.WithSchedulerInterval(time.Hour), option.WithIntrospectionInterval(0))
	if err := b2.loader.Await(ctx); err != nil {
		t.Fatal(err)
	}
	if line := logs.WaitFor(t, "g20", 5*time.Second); !strings.Contains(line, "level=ERROR") {
		t.Errorf("the refused credential's log line is not an ERROR: %s", line)
	}
	if _, err := b2.GetAccessToken(ctx, access.Request{CredentialID: "g20"}); !errors.Is(err, brokererr.ErrReuseGraceTooShort) {
		t.Errorf("a call for g20 on a replica with a 30s claim margin: %v, want ErrReuseGraceTooShort", err)
	}
	if _, err := b2.GetAccessToken(ctx, access.Request{CredentialID: "g0"}); !errors.Is(err, brokererr.ErrReauthRequired) {
		t.Errorf("a call for g0 (no grace) on that replica: %v, want served (reauthentication required: it has no family)", err)
	}
}

// hangingProvider presents refresh tokens to the real provider, then never
// answers until released: its replica died with the answer in flight.
type hangingProvider struct {
	Provider
	release chan struct{}
}

func (p *hangingProvider) Refresh(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, rt string) (*provider.Token, error) {
	_, _ = p.Provider.Refresh(ctx, ep, cc, rt)
	<-p.release
	return nil, &provider.Error{Op: "refresh", Outcome: provider.OutcomeUnknown, Description: "replica gone (test)"}
}

// graceCrash has replica A present the family's token to the simulator
// (20 s reuse grace, default claim timing) and die with the answer in
// flight; it returns replica B, the family's stored claim, and the clock.
func graceCrash(t *testing.T) (sim *providersim.Server, b *Broker, st store.Store, clk *fakeclock.Clock, deadline time.Time) {
	t.Helper()
	ctx := context.Background()
	const grace = 20 * time.Second
	clk = fakeclock.New(time.Now())
	st = memstore.New()
	sim = startSim(t, providersim.Config{Now: clk.Now, ReuseGrace: grace})
	hang := &hangingProvider{Provider: provider.New(nil), release: make(chan struct{})}
	a := newBroker(t, Config{Store: st, Provider: hang, Auditor: &recordingAuditor{}}, replicaOpts(clk)...)
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(hang.release) }) }) // before a.Close
	b = newTestBroker(t, st, replicaOpts(clk)...)
	spec := simSpec(sim)
	spec.ReuseGrace = grace
	if _, err := b.Credentials().Create(ctx, "x", spec); err != nil {
		t.Fatal(err)
	}
	rt, _ := sim.IssueRefreshToken("c", nil)
	if _, err := b.ImportRefreshToken(ctx, "x", rt); err != nil {
		t.Fatal(err)
	}
	before := sim.Stats().Rotations
	clk.Add(3 * time.Hour)
	go func() { _, _ = a.GetAccessToken(context.Background(), access.Request{CredentialID: "x"}) }()
	poll.Until(t, 10*time.Second, "A's refresh rotated at the provider", func() bool { return sim.Stats().Rotations > before })
	f := storedFamily(ctx, t, st)
	if f.Claim == nil {
		t.Fatal("no claim stored")
	}
	return sim, b, st, clk, f.Claim.Deadline
}

// With a 20 s grace and the default 45 s claim, a replica that died with
// the provider's answer in flight lost the family: the takeover came after
// the grace ended. The claim now fits in the grace period, and the takeover
// it allows recovers the family.
func TestTakeoverWithinTheReuseGraceKeepsTheFamily(t *testing.T) {
	ctx := context.Background()
	sim, b, _, clk, deadline := graceCrash(t)
	clk.Add(deadline.Sub(clk.Now())) // the earliest takeover the claim allows
	tok, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x"})
	s := sim.Stats()
	t.Logf("takeover at the claim's deadline: %v; provider %+v", err, s)
	if err != nil || s.GraceReuses != 1 || s.FamiliesRevoked != 0 || !sim.AccessTokenActive(tok.Token) {
		t.Fatalf("the family did not survive a crash inside its grace period: %v, %+v", err, s)
	}
}

// When the grace period did run out, the notice says which one was
// configured instead of "no reuse grace period".
func TestLostRotationNoticeNamesTheGracePeriod(t *testing.T) {
	ctx := context.Background()
	_, b, st, clk, deadline := graceCrash(t)
	clk.Add(deadline.Sub(clk.Now()) + time.Minute) // B was down too: past the grace
	_, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x"})
	if !errors.Is(err, brokererr.ErrReauthRequired) {
		t.Fatalf("takeover after the grace period: %v, want a lost family", err)
	}
	var details []string
	for _, n := range revocationNotices(ctx, t, st) {
		if n.Reason == notice.ReasonLostRotation {
			details = append(details, n.Detail)
		}
	}
	if len(details) != 1 || !strings.Contains(details[0], "reuse grace period of 20s") || strings.Contains(details[0], "no reuse grace") {
		t.Fatalf("lost-rotation notices: %q, want one naming the 20s grace", details)
	}
}

// blockingProvider never answers a refresh until released: its replica
// died before the provider processed anything.
type blockingProvider struct {
	Provider
	release chan struct{}
}

func (p *blockingProvider) Refresh(context.Context, provider.Endpoint, provider.ClientCredentials, string) (*provider.Token, error) {
	<-p.release
	return nil, &provider.Error{Op: "refresh", Outcome: provider.OutcomeNotProcessed, Description: "replica gone (test)"}
}

// On the embedded store, whose file lock proves the previous process dead,
// a restarted server takes the claim it left over at once: with the claim
// still running for 45 s, its callers would otherwise wait it out and time
// out first (the CLI's default timeout is 10 s).
func TestExclusiveStoreTakesAPreviousProcessClaimOverAtOnce(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(time.Now())
	st := memstore.New()
	sim := startSim(t, providersim.Config{Now: clk.Now})
	dead := &blockingProvider{Provider: provider.New(nil), release: make(chan struct{})}
	a := newBroker(t, Config{Store: st, Provider: dead, Auditor: &recordingAuditor{}}, replicaOpts(clk, option.WithExclusiveStore())...)
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(dead.release) }) })
	if _, err := a.Credentials().Create(ctx, "x", simSpec(sim)); err != nil {
		t.Fatal(err)
	}
	rt, _ := sim.IssueRefreshToken("c", nil)
	// A's import stores the family, claims its proving refresh and "dies"
	// in it.
	go func() { _, _ = a.ImportRefreshToken(context.Background(), "x", rt) }()
	poll.Until(t, 10*time.Second, "A's claim stored", func() bool {
		keys, err := st.List(ctx, "families/x/")
		if err != nil || len(keys) != 1 {
			return false
		}
		return storedFamily(ctx, t, st).Claim != nil
	})
	// The restarted process, on the same store, the clock not moved.
	restarted := newTestBroker(t, st, replicaOpts(clk, option.WithExclusiveStore())...)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second) // a guard: the fake clock never reaches the claim's deadline
	defer cancel()
	tok, err := restarted.GetAccessToken(cctx, access.Request{CredentialID: "x"})
	if err != nil || !sim.AccessTokenActive(tok.Token) {
		t.Fatalf("after a restart on the embedded store: %v, want a token without waiting out the claim", err)
	}
	if f := storedFamily(ctx, t, st); f.Claim != nil || f.Status != family.StatusActive {
		t.Fatalf("stored family after the takeover: %+v", f)
	}
}

// The pure method refuses a takeover of no other holder's claim.
func TestTakenOverFromDeadNeedsAnotherHoldersClaim(t *testing.T) {
	now := time.Now()
	var te *family.TransitionError
	for _, c := range []*family.Claim{nil, {Holder: me, Deadline: now.Add(time.Minute)}} {
		f := &family.Record{Status: family.StatusActive, FamilyID: "f", RefreshToken: "rt", Claim: c}
		if _, err := f.TakenOverFromDead(me, now.Add(time.Minute)); !errors.As(err, &te) || te.Event != family.EvTakeOverDead {
			t.Errorf("claim %+v: %v, want a refused take_over_dead", c, err)
		}
	}
}
