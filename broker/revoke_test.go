package broker

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/notice"
	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/memstore"
)

// revokeProvider wraps the real client: it counts revocations, can make the
// revocation endpoint unreachable, and can run a hook after a refresh
// succeeded at the provider (before the broker stores its result).
type revokeProvider struct {
	*provider.Client
	revokes      atomic.Int32
	unreachable  atomic.Bool
	afterRefresh atomic.Pointer[func()]
}

func (p *revokeProvider) Revoke(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, token string) error {
	p.revokes.Add(1)
	if p.unreachable.Load() {
		return &provider.Error{Op: "revoke", Outcome: provider.OutcomeNotProcessed, Description: "dial tcp: connection refused"}
	}
	return p.Client.Revoke(ctx, ep, cc, token)
}

func (p *revokeProvider) Refresh(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, rt string) (*provider.Token, error) {
	tok, err := p.Client.Refresh(ctx, ep, cc, rt)
	if f := p.afterRefresh.Swap(nil); f != nil && err == nil {
		(*f)()
	}
	return tok, err
}

type revokeEnv struct {
	sim  *providersim.Server
	clk  *fakeclock.Clock
	prov *revokeProvider
	aud  *recordingAuditor
	a, b *Broker // two replicas on one store
	spec credspec.Spec
}

func newRevokeEnv(t *testing.T, st store.Store) *revokeEnv {
	t.Helper()
	clk := fakeclock.New(time.Now())
	sim := startSim(t, providersim.Config{Now: clk.Now})
	env := &revokeEnv{sim: sim, clk: clk, prov: &revokeProvider{Client: provider.New(nil)}, aud: &recordingAuditor{}, spec: simSpec(sim)}
	cfg := Config{Store: st, Provider: env.prov, Auditor: env.aud}
	env.a, env.b = newBroker(t, cfg, replicaOpts(clk)...), newBroker(t, cfg, replicaOpts(clk)...)
	return env
}

// install creates credential x with a fresh family and returns the refresh
// token Rotavault holds now.
func (env *revokeEnv) install(ctx context.Context, t *testing.T, st store.Store) string {
	t.Helper()
	if _, err := env.a.Credentials().Create(ctx, "x", env.spec); err != nil {
		t.Fatal(err)
	}
	rt, err := env.sim.IssueRefreshToken("c", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.a.ImportRefreshToken(ctx, "x", rt); err != nil {
		t.Fatal(err)
	}
	return storedFamily(ctx, t, st).RefreshToken
}

func storedFamily(ctx context.Context, t *testing.T, st store.Store) family.Record {
	t.Helper()
	var f family.Record
	if err := json.Unmarshal(famRecord(ctx, t, st, "x").Value, &f); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestRevokeCredential(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	env := newRevokeEnv(t, st)
	rt := env.install(ctx, t, st)
	// Both replicas cache an access token.
	for _, b := range []*Broker{env.a, env.b} {
		if _, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	sub, err := env.a.Subscribe(ctx, []string{"x"}, "")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	before := storedFamily(ctx, t, st)

	res, err := env.a.RevokeCredential(audit.WithActor(ctx, "ops@example"), "x", "laptop stolen")
	if err != nil {
		t.Fatal(err)
	}
	if res.FamilyID != before.FamilyID || res.Generation != before.Generation || res.ProviderRevocation != notice.ProviderRevocationConfirmed || res.AlreadyRevoked {
		t.Fatalf("revocation = %+v, family %s gen %d", res, before.FamilyID, before.Generation)
	}
	if env.sim.RevokeFamilyOf(rt) {
		t.Fatal("the refresh token was still live at the provider")
	}
	after := storedFamily(ctx, t, st)
	if after.Status != family.StatusRevoked || after.RevokedReason != notice.ReasonAdminRevoked || after.RefreshToken != "" || after.PendingRevocation != "" || after.Access != nil {
		t.Fatalf("stored family after revocation: status %s reason %s token kept %v pending %v access %v",
			after.Status, after.RevokedReason, after.RefreshToken != "", after.PendingRevocation != "", after.Access != nil)
	}
	n, err := sub.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n.Kind != notice.FamilyRevoked || n.Reason != notice.ReasonAdminRevoked || n.ProviderRevocation != notice.ProviderRevocationConfirmed || n.FamilyID != before.FamilyID {
		t.Fatalf("notice = %+v", n)
	}
	ev, ok := env.aud.last(audit.ActionFamilyRevoked)
	if !ok || ev.Actor != "ops@example" || ev.Reason != string(notice.ReasonAdminRevoked) || !strings.Contains(ev.Detail, "laptop stolen") {
		t.Fatalf("audit record = %+v", ev)
	}
	// The revoking replica drops its cache at once; the other one, whose
	// cache is fresh, finds out on its next store read. A rejected-token
	// report (the provider killed the access token too) makes that read.
	if _, err := env.a.GetAccessToken(ctx, access.Request{CredentialID: "x"}); !errors.Is(err, brokererr.ErrReauthRequired) {
		t.Fatalf("GetAccessToken on the revoking replica: %v, want ErrReauthRequired", err)
	}
	if _, err := env.b.GetAccessToken(ctx, access.Request{CredentialID: "x", Rejected: &access.RejectedToken{Generation: before.Generation}}); !errors.Is(err, brokererr.ErrReauthRequired) {
		t.Fatalf("GetAccessToken on the other replica: %v, want ErrReauthRequired", err)
	}

	// Idempotent: OK, nothing presented to the provider again.
	revokes := env.prov.revokes.Load()
	again, err := env.b.RevokeCredential(ctx, "x", "again")
	if err != nil {
		t.Fatal(err)
	}
	if !again.AlreadyRevoked || again.FamilyID != before.FamilyID || again.ProviderRevocation != notice.ProviderRevocationConfirmed {
		t.Fatalf("second revocation = %+v", again)
	}
	if env.prov.revokes.Load() != revokes {
		t.Fatal("a second revocation called the provider again")
	}

	// Reauthenticate installs a new family.
	rt2, _ := env.sim.IssueRefreshToken("c", nil)
	act, err := env.b.ImportRefreshToken(ctx, "x", rt2)
	if err != nil {
		t.Fatal(err)
	}
	// Replica A learns of the new family on its next (rate-limited) re-read.
	env.clk.Add(2 * inactiveRecheck)
	tok, err := env.a.GetAccessToken(ctx, access.Request{CredentialID: "x"})
	if err != nil || tok.FamilyID != act.FamilyID {
		t.Fatalf("after reauthentication: %+v %v", tok, err)
	}
}

func TestRevokeCredentialProviderUnreachable(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	env := newRevokeEnv(t, st)
	rt := env.install(ctx, t, st)
	sub, err := env.a.Subscribe(ctx, []string{"x"}, "")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	env.prov.unreachable.Store(true)
	res, err := env.a.RevokeCredential(ctx, "x", "suspected leak")
	if err != nil {
		t.Fatal(err)
	}
	if res.ProviderRevocation != notice.ProviderRevocationUnconfirmed {
		t.Fatalf("revocation = %+v, want unconfirmed", res)
	}
	n, err := sub.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n.Reason != notice.ReasonAdminRevoked || n.ProviderRevocation != notice.ProviderRevocationUnconfirmed || !strings.Contains(n.Detail, "not confirmed") {
		t.Fatalf("notice = %+v", n)
	}
	for _, b := range []*Broker{env.a, env.b} {
		if _, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x"}); !errors.Is(err, brokererr.ErrReauthRequired) {
			t.Fatalf("GetAccessToken: %v, want ErrReauthRequired", err)
		}
	}
	tokenRequests := env.sim.Stats().TokenRequests
	c, err := env.b.Credentials().Get(ctx, "x")
	if err != nil || c.Status != family.StatusRevoked || !strings.Contains(c.LastError, "not confirmed") {
		t.Fatalf("credential = %+v, %v", c, err)
	}
	if strings.Contains(c.LastError, rt) {
		t.Fatal("the refresh token leaked into the credential description")
	}
	if env.sim.Stats().TokenRequests != tokenRequests {
		t.Fatal("a revoked family's refresh token was presented to the token endpoint")
	}

	// A retry on any replica reaches the provider once it is back.
	env.prov.unreachable.Store(false)
	again, err := env.b.RevokeCredential(ctx, "x", "retry")
	if err != nil {
		t.Fatal(err)
	}
	if !again.AlreadyRevoked || again.ProviderRevocation != notice.ProviderRevocationConfirmed {
		t.Fatalf("retry = %+v", again)
	}
	if env.sim.RevokeFamilyOf(rt) {
		t.Fatal("the refresh token was still live at the provider after the retry")
	}
	if f := storedFamily(ctx, t, st); f.PendingRevocation != "" || f.Status != family.StatusRevoked {
		t.Fatalf("the confirmed token is still stored (status %s)", f.Status)
	}
}

func TestRevokeCredentialErrors(t *testing.T) {
	ctx := context.Background()
	env := newRevokeEnv(t, memstore.New())
	if _, err := env.a.Credentials().Create(ctx, "x", env.spec); err != nil {
		t.Fatal(err)
	}
	var inv *brokererr.InvalidArgumentError
	for _, reason := range []string{"", strings.Repeat("a", MaxRevocationReasonLen+1), "line\nbreak"} {
		if _, err := env.a.RevokeCredential(ctx, "x", reason); !errors.As(err, &inv) || inv.Field != "reason" {
			t.Errorf("reason %q: %v, want an invalid reason", reason, err)
		}
	}
	if _, err := env.a.RevokeCredential(ctx, "nope", "r"); !errors.Is(err, brokererr.ErrNotFound) {
		t.Errorf("unknown credential: %v", err)
	}
	if _, err := env.a.RevokeCredential(ctx, "x", "r"); !errors.Is(err, brokererr.ErrReauthRequired) {
		t.Errorf("no family: %v, want ErrReauthRequired", err)
	}
	if env.prov.revokes.Load() != 0 {
		t.Error("the provider was called for a refused revocation")
	}
}

// Replica A holds the refresh claim when replica B revokes: A then presents
// a token the provider has revoked, and must stop without resurrecting the
// family or announcing a theft.
func TestRevokeCredentialWhileAnotherReplicaHoldsTheClaim(t *testing.T) {
	ctx := context.Background()
	hs := &faultStore{Store: memstore.New()}
	env := newRevokeEnv(t, hs)
	env.install(ctx, t, hs)
	sub, err := env.b.Subscribe(ctx, []string{"x"}, "")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	var revokeErr error
	claimed := &fault{op: "put", prefix: "families/", once: true,
		match: func(_ string, value []byte) bool { return !familyWrites(false)("", value) },
		after: func(_ string, _ []byte, _, version uint64, err error) (uint64, error) {
			if err == nil {
				// A's claim is stored and its provider call not yet made.
				_, revokeErr = env.b.RevokeCredential(ctx, "x", "revoked mid-refresh")
			}
			return version, err
		}}
	hs.inject(claimed)
	env.clk.Add(3 * time.Hour)
	_, err = env.a.GetAccessToken(ctx, access.Request{CredentialID: "x"})
	if revokeErr != nil {
		t.Fatal(revokeErr)
	}
	if claimed.hits.Load() == 0 {
		t.Fatal("A never claimed a refresh")
	}
	if !errors.Is(err, brokererr.ErrReauthRequired) {
		t.Fatalf("A's refresh: %v, want ErrReauthRequired", err)
	}
	f := storedFamily(ctx, t, hs.Store)
	if f.Status != family.StatusRevoked || f.RevokedReason != notice.ReasonAdminRevoked || f.RefreshToken != "" {
		t.Fatalf("stored family: status %s reason %s", f.Status, f.RevokedReason)
	}
	n, err := sub.Next(ctx)
	if err != nil || n.Reason != notice.ReasonAdminRevoked {
		t.Fatalf("first notice: %+v %v", n, err)
	}
}

// Replica A's refresh succeeded at the provider when replica B revokes: A's
// result write loses the check-and-set and must find the family revoked,
// discard the new tokens and not store them.
func TestRevokeCredentialDuringARefreshThatSucceeded(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	env := newRevokeEnv(t, st)
	env.install(ctx, t, st)
	var revokeErr error
	hook := func() { _, revokeErr = env.b.RevokeCredential(ctx, "x", "revoked mid-refresh") }
	env.prov.afterRefresh.Store(&hook)
	env.clk.Add(3 * time.Hour)
	_, err := env.a.GetAccessToken(ctx, access.Request{CredentialID: "x"})
	if revokeErr != nil {
		t.Fatal(revokeErr)
	}
	if env.prov.afterRefresh.Load() != nil {
		t.Fatal("A never refreshed at the provider")
	}
	if !errors.Is(err, brokererr.ErrReauthRequired) {
		t.Fatalf("A's refresh: %v, want ErrReauthRequired", err)
	}
	f := storedFamily(ctx, t, st)
	if f.Status != family.StatusRevoked || f.RefreshToken != "" || f.Access != nil {
		t.Fatalf("the family was resurrected: status %s", f.Status)
	}
	if _, err := env.a.GetAccessToken(ctx, access.Request{CredentialID: "x"}); !errors.Is(err, brokererr.ErrReauthRequired) {
		t.Fatalf("GetAccessToken after: %v", err)
	}
}
