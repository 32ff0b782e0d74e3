package integration

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/rotavault/rotavault/broker"
	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/option"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/server"
	"github.com/rotavault/rotavault/store"
)

// failingStore wraps the real store and makes family writes fail while
// broken is set, as a disk or a network store outage would.
type failingStore struct {
	store.Store
	broken atomic.Bool
	// passes lets this many family writes through while broken.
	passes atomic.Int32
}

var errOutage = errors.New("injected store outage")

func (s *failingStore) Put(ctx context.Context, key string, value []byte, expected uint64) (uint64, error) {
	if s.broken.Load() && strings.HasPrefix(key, "families/") && s.passes.Add(-1) < 0 {
		return 0, errOutage
	}
	return s.Store.Put(ctx, key, value, expected)
}

func TestStoreOutageAfterRotationLosesNothing(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.installSalesforce("acme")
	first := e.token("acme")

	// Rebuild the node on a store that can fail.
	e.stop()
	e.start()
	fs := &failingStore{Store: e.store}
	b, err := broker.New(context.Background(), broker.Config{Store: fs, Provider: provider.New(nil), Auditor: e.audit},
		option.WithClock(e.clock.now), option.WithRetryBase(time.Millisecond), option.WithSchedulerInterval(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	// The store fails right after the refresh claim is written: the
	// provider rotates, and the new token cannot be stored.
	fs.passes.Store(1)
	fs.broken.Store(true)
	e.expire()
	_, err = b.GetAccessToken(ctxT(t), access.Request{CredentialID: "acme"})
	var unavailable *brokererr.UnavailableError
	if !errors.As(err, &unavailable) || unavailable.Component != brokererr.ComponentStore {
		t.Fatalf("during the outage: %v, want the store unavailable", err)
	}
	rotations := e.sim.Stats().Rotations
	desc, err := b.Credentials().Get(ctxT(t), "acme")
	if err != nil || !strings.Contains(desc.LastError, "held in memory") {
		t.Fatalf("describe during the outage: %+v %v", desc, err)
	}

	// Still down: callers keep getting UNAVAILABLE, and the older refresh
	// token is never presented again.
	_, err = b.GetAccessToken(ctxT(t), access.Request{CredentialID: "acme"})
	if !errors.As(err, &unavailable) {
		t.Fatalf("second call during the outage: %v", err)
	}
	fs.broken.Store(false)
	tok, err := b.GetAccessToken(ctxT(t), access.Request{CredentialID: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	if s := e.sim.Stats(); s.Rotations != rotations || s.ReuseDetections != 0 {
		t.Fatalf("after the outage the provider saw %+v (rotations before: %d)", s, rotations)
	}
	if tok.FamilyID != first.GetFamilyId() || !e.sim.AccessTokenActive(tok.Token) {
		t.Fatal("the rotation made during the outage was lost")
	}
	// The held token reached the store: a fresh node refreshes with it.
	_ = b.Close()
	e.restart()
	e.expire()
	if got := e.token("acme"); got.GetFamilyId() != first.GetFamilyId() || e.sim.Stats().ReuseDetections != 0 {
		t.Fatal("the stored token is not the provider's current one")
	}
}

func TestSignatureMismatchStoresTokenThenFlags(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.installSalesforce("acme")
	first := e.token("acme")
	e.sim.CorruptSignatures(true)
	e.expire()
	tok := e.token("acme")
	if tok.GetGeneration() != first.GetGeneration()+1 {
		t.Fatal("no refresh happened")
	}
	desc, err := e.admin.GetCredential(ctxT(t), &rotavaultv1.GetCredentialRequest{CredentialId: "acme"})
	if err != nil || !strings.Contains(desc.GetCredential().GetLastError(), "signature") {
		t.Fatalf("credential not flagged: %v %v", desc, err)
	}
	wantAudit(t, e, "signature_mismatch", "acme", first.GetFamilyId())
	// Stored first: the rotated token survives a restart and works.
	e.sim.CorruptSignatures(false)
	e.restart()
	e.expire()
	if got := e.token("acme"); got.GetFamilyId() != first.GetFamilyId() || e.sim.Stats().ReuseDetections != 0 {
		t.Fatal("the token received with a bad signature was not stored")
	}
}

func TestProviderOutageIsRetriedAndNeverRevokes(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.installSalesforce("acme")
	first := e.token("acme")
	e.expire()
	e.sim.InjectFailure(providersim.FailUnavailable, 2)
	e.sim.InjectFailure(providersim.FailRateLimited, 1)
	tok := e.token("acme")
	if tok.GetFamilyId() != first.GetFamilyId() || tok.GetGeneration() != first.GetGeneration()+1 {
		t.Fatalf("got %+v", tok)
	}
	// A longer outage: UNAVAILABLE with retry info, family intact.
	e.expire()
	e.sim.InjectFailure(providersim.FailUnavailable, 10)
	_, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
	wantCode(t, err, codes.Unavailable, server.ReasonProviderUnavailable)
	if strings.Contains(err.Error(), e.sim.URL()) {
		t.Fatal("the provider's URL crossed the wire")
	}
	e.sim.InjectFailure(providersim.FailUnavailable, 0)
	for e.sim.Stats().InjectedFailures < 13 { // drain what is left of the injected failures
		if _, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"}); err == nil {
			break
		}
	}
	if tok := e.token("acme"); tok.GetFamilyId() != first.GetFamilyId() {
		t.Fatal("an outage cost the family")
	}
}

func TestIdleFamilyIsRefreshedBeforeIdleTimeout(t *testing.T) {
	e := newEnv(t, envOptions{brokerOpts: []option.Option{option.WithSchedulerInterval(20 * time.Millisecond)}})
	e.installSalesforce("idle", func(s *rotavaultv1.CredentialSpec) { s.RefreshTokenIdleTimeout = durationpb.New(time.Hour) })
	before := e.sim.Stats().RefreshRequests
	// Nobody asks for a token; half the idle timeout passes.
	e.clock.advance(31 * time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), awaitDeadline)
	defer cancel()
	if err := e.sim.WaitForTokenRequests(ctx, e.sim.Stats().TokenRequests+1); err != nil {
		t.Fatalf("no proactive refresh: %v", err)
	}
	// Counted on arrival above; processed (and counted as a refresh) just after.
	awaitStats(t, e.sim, func(s providersim.Stats) bool { return s.RefreshRequests == before+1 })
}

func TestDeleteRevokesAtProviderAndDestroys(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.installSalesforce("acme")
	tok := e.token("acme")
	stream, _ := e.watch(ctxT(t), "", "acme")
	if _, err := e.admin.DeleteCredential(ctxT(t), &rotavaultv1.DeleteCredentialRequest{CredentialId: "acme"}); err != nil {
		t.Fatal(err)
	}
	if e.sim.AccessTokenActive(tok.GetAccessToken()) {
		t.Fatal("the family is still alive at the provider")
	}
	if n := nextNotice(t, stream); n.GetReason() != rotavaultv1.RevocationReason_REVOCATION_REASON_ADMIN {
		t.Fatalf("notice = %+v", n)
	}
	_, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
	wantCode(t, err, codes.NotFound, "")
	if _, err := e.store.Get(ctxT(t), "credentials/acme"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the credential record survived the delete: %v", err)
	}
	if keys, err := e.store.List(ctxT(t), "families/acme/"); err != nil || len(keys) != 0 {
		t.Fatalf("family records survived the delete: %v %v", keys, err)
	}
	// The id can be reused.
	e.installSalesforce("acme")
}

func TestClientSecretRotationKeepsFamily(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.installSalesforce("acme")
	first := e.token("acme")
	const newSecret = "rotated-secret-77"
	e.sim.AddClient(providersim.Client{ID: simClientID, Secret: newSecret, RedirectURIs: []string{callbackURI}, RequirePKCE: true})
	resp, err := e.admin.UpdateCredential(ctxT(t), &rotavaultv1.UpdateCredentialRequest{CredentialId: "acme",
		Spec: &rotavaultv1.CredentialSpec{ClientSecret: newSecret}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"client_secret"}}})
	if err != nil {
		t.Fatal(err)
	}
	if c := resp.GetCredential(); c.GetSpec().GetClientSecret() != "" || !c.GetHasClientSecret() || c.GetFamilyId() != first.GetFamilyId() {
		t.Fatalf("update answered %+v", c)
	}
	e.expire()
	if tok := e.token("acme"); tok.GetFamilyId() != first.GetFamilyId() {
		t.Fatal("family lost with the secret rotation")
	}
	checkNoSecrets(t, []string{newSecret, simClientSecret}, map[string]string{"server logs": e.logs.String()})
}

func TestUsedTokenIsRefreshedAheadOfExpiry(t *testing.T) {
	e := newEnv(t, envOptions{brokerOpts: []option.Option{option.WithSchedulerInterval(20 * time.Millisecond)}})
	e.installSalesforce("busy")
	first := e.token("busy") // in use
	target := e.sim.Stats().TokenRequests + 1
	// Into the last tenth of the token's life, but not past its expiry.
	e.clock.advance(accessLifetime - 40*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), awaitDeadline)
	defer cancel()
	if err := e.sim.WaitForTokenRequests(ctx, target); err != nil {
		t.Fatalf("no proactive refresh: %v", err)
	}
	// The caller then finds the new token ready, with no refresh of its own.
	var tok *rotavaultv1.GetAccessTokenResponse
	for tok == nil || tok.GetGeneration() == first.GetGeneration() {
		if ctx.Err() != nil {
			t.Fatal("the refreshed token never became current")
		}
		tok = e.token("busy")
	}
	if got := e.sim.Stats().RefreshRequests; got != 2 {
		t.Fatalf("refreshes: %d, want the import's and the scheduler's", got)
	}
}

func TestReauthenticationLeavesNoSecondLiveFamily(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.installSalesforce("acme")
	old := e.token("acme")
	act := e.authorize("acme")
	if e.sim.AccessTokenActive(old.GetAccessToken()) {
		t.Fatal("the replaced family is still alive at the provider")
	}
	if tok := e.token("acme"); tok.GetFamilyId() != act.GetFamilyId() || !e.sim.AccessTokenActive(tok.GetAccessToken()) {
		t.Fatal("the new family does not work")
	}
}
