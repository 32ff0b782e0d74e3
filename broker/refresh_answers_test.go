package broker

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/provider"
)

// The refresh loop against scripted provider answers: what it presents,
// what it stores, what the caller hears.
func TestRefreshLoopActsOnEachAnswer(t *testing.T) {
	tests := []struct {
		name    string
		from    family.State
		grace   time.Duration
		answers []error
		// refreshes the provider must see; the state left; the caller's
		// error.
		refreshes int
		state     family.State
		err       func(error) bool
		notices   []string
	}{
		{"unknown, then the one retry rotates", family.StateClaimed, 0, []error{answerUnknown, nil}, 2, family.StateActive, noErr, nil},
		{"unknown twice without grace: gives up in doubt", family.StateClaimed, 0, []error{answerUnknown, answerUnknown}, 2, family.StateInDoubtReleased, isUnavailable, nil},
		{"unknown, then invalid_grant: lost rotation", family.StateClaimed, 0, []error{answerUnknown, answerInvalidGrant}, 2, family.StateRevoked, isReauth, []string{"revoked:lost_rotation"}},
		{"unknown within a grace period: retried until it rotates", family.StateClaimed, time.Minute, []error{answerUnknown, answerUnknown, answerUnknown, nil}, 4, family.StateActive, noErr, nil},
		{"not processed until the tries run out", family.StateClaimed, 0, []error{answerNotProcessed, answerNotProcessed, answerNotProcessed, answerNotProcessed}, 4, family.StateActive, isUnavailable, nil},
		{"not processed, then rotated", family.StateInDoubt, 0, []error{answerNotProcessed, nil}, 2, family.StateActive, noErr, nil},
		{"client refused: family kept", family.StateClaimed, 0, []error{answerBadClient}, 1, family.StateActive, isClientRejected, nil},
		{"unclassified failure: claim released", family.StateClaimed, 0, []error{errors.New("scriptedprovider: boom")}, 1, family.StateActive, isUnavailable, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newFamHarness(t)
			fam := h.record(tt.from)
			h.put(fam)
			if tt.grace > 0 {
				if _, err := h.b.Credentials().Update(h.ctx, "x", []credspec.Field{credspec.FieldReuseGrace}, credspec.Spec{ReuseGrace: tt.grace}); err != nil {
					t.Fatal(err)
				}
			}
			h.prov.then(tt.answers...)
			notices := len(h.notices())
			_, err := h.b.refreshFamily(h.ctx, h.lease())
			if !tt.err(err) {
				t.Errorf("caller's error: %v", err)
			}
			if h.prov.refreshes != tt.refreshes {
				t.Errorf("provider saw %d refreshes, want %d", h.prov.refreshes, tt.refreshes)
			}
			for _, rt := range h.prov.presented {
				if rt != fam.RefreshToken {
					t.Errorf("presented %q, want only the stored %q", rt, fam.RefreshToken)
				}
			}
			if got := h.State(); got != tt.state {
				t.Errorf("state %s, want %s", got, tt.state)
			}
			if got := h.notices()[notices:]; !slices.Equal(got, tt.notices) {
				t.Errorf("notices %v, want %v", got, tt.notices)
			}
		})
	}
}

// A client refusal re-reads the credential once: a secret fixed on another
// replica is used at once, without waiting for the credential cache.
func TestRefreshRetriesWithACredentialFixedElsewhere(t *testing.T) {
	h := newFamHarness(t)
	h.put(h.record(family.StateClaimed))
	l := h.lease()
	if _, err := h.b.Credentials().Update(h.ctx, "x", []credspec.Field{credspec.FieldClientSecret}, credspec.Spec{ClientSecret: "fixed"}); err != nil {
		t.Fatal(err)
	}
	h.prov.then(answerBadClient, nil)
	v, err := h.b.refreshFamily(h.ctx, l)
	if err != nil || v.fam.Generation != 4 || h.prov.refreshes != 2 {
		t.Fatalf("after the fix: %v, %d refreshes; want generation 4 after 2", err, h.prov.refreshes)
	}
}

// A refresh whose wait for a retry is cut short gives up and releases the
// claim.
func TestRefreshGivesUpWhenItsTimeRunsOut(t *testing.T) {
	h := newFamHarness(t)
	h.put(h.record(family.StateClaimed))
	ctx, cancel := context.WithCancel(h.ctx)
	cancel()
	h.prov.then(answerNotProcessed)
	if _, err := h.b.refreshFamily(ctx, h.lease()); !isUnavailable(err) {
		t.Fatalf("cancelled refresh: %v, want unavailable", err)
	}
	if got := h.State(); got != family.StateActive {
		t.Fatalf("state %s, want the claim released", got)
	}
}

// The doubt is stored before a retry; a claim lost meanwhile stops the
// refresh with nothing presented again.
func TestDoubtIsStoredBeforeTheRetry(t *testing.T) {
	h := newFamHarness(t)
	h.put(h.record(family.StateClaimed))
	l := h.lease()
	h.put(takenBy(h.record(family.StateInDoubt), other, h.clk.Now().Add(time.Minute)))
	h.prov.then(answerUnknown)
	if _, err := h.b.refreshFamily(h.ctx, l); !errors.Is(err, brokererr.ErrConflict) {
		t.Fatalf("marking doubt on a lost claim: %v, want ErrConflict", err)
	}
	if h.prov.refreshes != 1 {
		t.Fatalf("%d refreshes presented; the lost claim must stop the retry", h.prov.refreshes)
	}
}

func takenBy(f *family.Record, holder string, deadline time.Time) *family.Record {
	f.Claim = &family.Claim{Holder: holder, Deadline: deadline}
	return f
}

// After a result write conflict the broker decides on the stored state: it
// never revokes a token of a family that lives on (at Salesforce that kills
// the family), and revokes the new token when the family is dead or
// replaced.
func TestResultWriteConflictRevokesNothingOfALiveFamily(t *testing.T) {
	tests := []struct {
		name    string
		stored  func(h *famHarness) *family.Record
		err     func(error) bool
		revoked []string
		state   family.State
	}{
		{"taken over and rotated by another replica", func(h *famHarness) *family.Record {
			f := h.record(family.StateActive)
			f.Generation, f.RefreshToken = 4, "rt-theirs"
			return f
		}, func(err error) bool { return errors.Is(err, brokererr.ErrConflict) }, nil, family.StateActive},
		{"taken over, their refresh still running", func(h *famHarness) *family.Record {
			return takenBy(h.record(family.StateInDoubt), other, h.clk.Now().Add(time.Minute))
		}, func(err error) bool { return errors.Is(err, brokererr.ErrConflict) }, nil, family.StateInDoubt},
		{"our write had landed", func(h *famHarness) *family.Record {
			f := h.record(family.StateActive)
			f.Generation, f.RefreshToken = 4, "rt-ours"
			return f
		}, noErr, nil, family.StateActive},
		{"revoked meanwhile", func(h *famHarness) *family.Record { return h.record(family.StateRevokedPendingProvider) }, isReauth, []string{"rt-ours"}, family.StateRevokedPendingProvider},
		{"replaced by another family", func(h *famHarness) *family.Record {
			f := h.record(family.StateActive)
			f.FamilyID, f.Generation, f.RefreshToken = "fam-2", 0, "rt-new-family"
			return f
		}, func(err error) bool { return errors.Is(err, brokererr.ErrConflict) }, []string{"rt-ours"}, family.StateActive},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newFamHarness(t)
			h.put(h.record(family.StateClaimed))
			l := h.lease()
			h.put(tt.stored(h))
			_, err := l.storeResult(h.ctx, rotation("rt-ours"))
			if !tt.err(err) {
				t.Errorf("caller's error: %v", err)
			}
			if !slices.Equal(h.prov.revoked, tt.revoked) {
				t.Errorf("revoked at the provider: %v, want %v", h.prov.revoked, tt.revoked)
			}
			if got := h.State(); got != tt.state {
				t.Errorf("state %s, want %s (the stored one)", got, tt.state)
			}
		})
	}
}

// A replica waits for another's live claim instead of presenting the same
// token, and takes the claim over, in doubt, once its deadline passed.
func TestClaimWaitsForTheHolderThenTakesOver(t *testing.T) {
	h := newFamHarness(t)
	h.put(takenBy(h.record(family.StateActive), other, h.clk.Now().Add(45*time.Second)))
	type result struct {
		l   *claimLease
		err error
	}
	done := make(chan result, 1)
	go func() {
		l, _, err := h.b.acquire(h.ctx, h.e, always, nil)
		done <- result{l, err}
	}()
	poll.Until(t, 10*time.Second, "a claim wait", func() bool { return h.b.Stats().ClaimWaits > 0 })
	h.clk.Add(time.Minute)
	r := <-done
	if r.err != nil || r.l == nil {
		t.Fatalf("acquire: %+v", r)
	}
	if got := h.State(); got != family.StateInDoubt || r.l.v.fam.Claim.Holder != me {
		t.Fatalf("state %s, holder %s; want in doubt, ours", got, r.l.v.fam.Claim.Holder)
	}
}

// A replica that claims on its cached view re-reads the credential once the
// credential cache expired, and meets a conflict (then reads) when another
// replica wrote the family meanwhile.
func TestOptimisticClaimFollowsOtherWriters(t *testing.T) {
	h := newFamHarness(t)
	h.put(h.record(family.StateActive))
	// Another replica rotates: the store moves past the cached version.
	stale := h.e.view.Load()
	newer := h.record(family.StateActive)
	newer.Generation, newer.RefreshToken = 4, "rt-4"
	h.put(newer)
	h.e.view.Store(stale)
	h.clk.Add(2 * family.CredentialCacheTTL)
	reads := h.st.reads.Load()
	l, _, err := h.b.acquire(h.ctx, h.e, always, nil)
	if err != nil || l == nil {
		t.Fatalf("acquire: %v", err)
	}
	if l.v.fam.Generation != 4 || l.v.fam.RefreshToken != "rt-4" {
		t.Fatalf("claimed generation %d, want the newer 4", l.v.fam.Generation)
	}
	if h.st.reads.Load() == reads {
		t.Fatal("no store read: the claim trusted a stale view")
	}
}

// updateFamily gives up with ErrConflict when the family keeps changing.
func TestUpdateFamilyIsBounded(t *testing.T) {
	h := newFamHarness(t)
	h.put(h.record(family.StateActive))
	calls := 0
	_, err := h.b.updateFamily(h.ctx, h.e, nil, func(cur *view) (*family.Record, error) {
		calls++
		// another writer moves the record before each of our writes
		moved := cur.fam.Clone()
		moved.Generation++
		h.put(moved)
		return cur.fam.Clone(), nil
	})
	if !errors.Is(err, brokererr.ErrConflict) || calls != familyWriteTries {
		t.Fatalf("updateFamily: %v after %d rounds, want ErrConflict after %d", err, calls, familyWriteTries)
	}
}

// A provider that refused the refresh token while the store is down: the
// family cannot be marked revoked, but its access token is no longer
// handed out (the provider killed it with the family).
func TestRevocationThatCannotBeStoredStopsServingTheToken(t *testing.T) {
	h := newFamHarness(t)
	h.put(h.record(family.StateClaimed))
	defer h.st.inject(&fault{op: "put", prefix: "families/", fail: errStoreDown})()
	h.prov.then(answerInvalidGrant)
	if _, err := h.b.refreshFamily(h.ctx, h.lease()); !isUnavailable(err) {
		t.Fatalf("refresh: %v, want unavailable", err)
	}
	if h.e.view.Load().fam.Access != nil {
		t.Fatal("the access token of a family the provider revoked is still served")
	}
	if got := h.State(); got != family.StateClaimed {
		t.Fatalf("stored state %s, want the claim left (nothing written)", got)
	}
}

// A refresh that meets invalid_grant while another family replaced its own
// revokes nothing and says a new family is active.
func TestInvalidGrantOfAReplacedFamilyRevokesNothing(t *testing.T) {
	h := newFamHarness(t)
	h.put(h.record(family.StateClaimed))
	l := h.lease()
	replaced := h.record(family.StateActive)
	replaced.FamilyID, replaced.RefreshToken = "fam-2", "rt-fam-2"
	h.put(replaced)
	h.prov.then(answerInvalidGrant)
	if _, err := h.b.refreshFamily(h.ctx, l); !errors.Is(err, brokererr.ErrConflict) {
		t.Fatalf("refresh: %v, want ErrConflict", err)
	}
	if f := h.stored(); f.Status != family.StatusActive || f.FamilyID != "fam-2" || len(h.notices()) != 0 {
		t.Fatalf("stored %+v, notices %v; want fam-2 active, no notice", f, h.notices())
	}
}

// A client refused twice, the second time after the credential changed,
// keeps the family and says the client is refused.
func TestClientRefusedAfterTheRecheckKeepsTheFamily(t *testing.T) {
	h := newFamHarness(t)
	h.put(h.record(family.StateClaimed))
	l := h.lease()
	if _, err := h.b.Credentials().Update(h.ctx, "x", []credspec.Field{credspec.FieldClientSecret}, credspec.Spec{ClientSecret: "still-wrong"}); err != nil {
		t.Fatal(err)
	}
	h.prov.then(answerBadClient, answerBadClient)
	if _, err := h.b.refreshFamily(h.ctx, l); !isClientRejected(err) || h.prov.refreshes != 2 {
		t.Fatalf("refresh: %v after %d refreshes, want ErrClientRejected after 2", err, h.prov.refreshes)
	}
	if got := h.State(); got != family.StateActive {
		t.Fatalf("state %s, want active (kept, released)", got)
	}
}

// A rotation whose answer carries a bad signature is stored first, then the
// credential is flagged and audited.
func TestSignatureMismatchIsStoredThenFlagged(t *testing.T) {
	h := newFamHarness(t)
	h.put(h.record(family.StateClaimed))
	tok := rotation("rt-4")
	tok.SignatureStatus, tok.TokenType = provider.SignatureMismatch, ""
	v, err := h.lease().storeResult(h.ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	if f := h.stored(); f.RefreshToken != "rt-4" || f.LastError == "" || v.fam.Access.Type != "Bearer" {
		t.Fatalf("stored %+v: want the new token, flagged, typed Bearer", f)
	}
	if h.aud.count(audit.ActionSignatureMismatch) != 1 {
		t.Fatal("no signature_mismatch audit record")
	}
}

// A held rotation is written before anything else: while the store is down
// nothing is presented to the provider, and once it is back the held token
// serves without a refresh.
func TestHeldRotationIsStoredBeforeAnyRefresh(t *testing.T) {
	h := newFamHarness(t)
	h.in(family.StateHeld)
	up := h.st.inject(&fault{op: "put", prefix: "families/", fail: errStoreDown})
	stale := func(v *view) bool { return v.fam.Generation == 3 }
	if _, err := h.b.refresh(h.ctx, h.e, nil, stale); !isUnavailable(err) {
		t.Fatalf("refresh with the store down: %v, want unavailable", err)
	}
	up()
	v, err := h.b.refresh(h.ctx, h.e, nil, stale)
	if err != nil || v.fam.RefreshToken != "rt-4" || h.prov.refreshes != 0 {
		t.Fatalf("after the store came back: %v, token %q, %d refreshes; want the held rotation, none", err, v.fam.RefreshToken, h.prov.refreshes)
	}
	if got := h.State(); got != family.StateActive {
		t.Fatalf("state %s, want active", got)
	}
}

// A held rotation that meets the store already holding it (its write
// landed) or a replacing family is dropped: the store's state wins.
func TestHeldRotationMeetingAnotherStateIsDropped(t *testing.T) {
	for _, tt := range []struct {
		name   string
		stored func(h *famHarness, held *family.Record) *family.Record
	}{
		{"its write had landed", func(_ *famHarness, held *family.Record) *family.Record { return held.Clone() }},
		{"another family", func(h *famHarness, _ *family.Record) *family.Record {
			f := h.record(family.StateActive)
			f.FamilyID = "fam-2"
			return f
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newFamHarness(t)
			h.in(family.StateHeld)
			want := tt.stored(h, h.e.rescue.Load().fam)
			h.put(want)
			v, err := h.b.storeRescue(h.ctx, h.e)
			if err != nil || h.e.rescue.Load() != nil || v.fam.FamilyID != want.FamilyID {
				t.Fatalf("storeRescue: %+v %v; want the stored family, nothing held", v, err)
			}
		})
	}
}

// The cached view only moves forward: of two views it keeps the newest
// credential and the newest family, and after a re-creation (versions
// restart) the newer incarnation.
func TestCachedViewKeepsTheNewestOfEach(t *testing.T) {
	h := newFamHarness(t)
	h.put(h.record(family.StateActive))
	cur := h.e.view.Load()
	olderFam := *cur
	olderFam.famVersion--
	olderFam.credVersion++
	h.e.setView(&olderFam)
	if v := h.e.view.Load(); v.famVersion != cur.famVersion || v.credVersion != cur.credVersion+1 {
		t.Fatalf("merged view: fam %d cred %d, want fam %d cred %d", v.famVersion, v.credVersion, cur.famVersion, cur.credVersion+1)
	}
	stale := *cur
	stale.famVersion--
	h.e.setView(&stale)
	if v := h.e.view.Load(); v.famVersion != cur.famVersion {
		t.Fatal("an older view replaced a newer one")
	}
	gone := *cur
	gone.cred = &family.Credential{ID: "x", Incarnation: "older", CreatedAt: cur.cred.CreatedAt.Add(-time.Hour)}
	h.e.setView(&gone)
	if h.e.view.Load().cred.Incarnation == "older" {
		t.Fatal("a deleted incarnation's view replaced the current one")
	}
	recreated := gone
	recreated.cred = &family.Credential{ID: "x", Incarnation: "newer", CreatedAt: cur.cred.CreatedAt.Add(time.Hour)}
	recreated.famVersion = 1
	h.e.setView(&recreated)
	if h.e.view.Load().cred.Incarnation != "newer" {
		t.Fatal("the re-created credential's view was refused")
	}
}

// Only the holder releases a claim; a claim lost meanwhile is left to its
// new holder.
func TestReleaseTouchesOnlyItsOwnClaim(t *testing.T) {
	h := newFamHarness(t)
	h.put(takenBy(h.record(family.StateActive), other, h.clk.Now().Add(time.Minute)))
	writes := h.st.writes.Load()
	h.lease().release(h.ctx)
	if h.st.writes.Load() != writes {
		t.Fatal("released another replica's claim")
	}
	h.put(h.record(family.StateClaimed))
	l := h.lease()
	h.put(takenBy(h.record(family.StateInDoubt), other, h.clk.Now().Add(time.Minute)))
	l.release(h.ctx)
	if f := h.stored(); f.Claim == nil || f.Claim.Holder != other {
		t.Fatalf("claim after a stale release: %+v, want the other replica's", f.Claim)
	}
}

// Claims fail cleanly: on a revoked family, with the store unreadable, and
// when the wait for another holder is cut short; a transient write error is
// retried.
func TestClaimFailures(t *testing.T) {
	t.Run("revoked", func(t *testing.T) {
		h := newFamHarness(t)
		h.put(h.record(family.StateRevoked))
		if _, _, err := h.b.acquire(h.ctx, h.e, always, nil); !isReauth(err) {
			t.Fatalf("acquire: %v", err)
		}
	})
	t.Run("store unreadable", func(t *testing.T) {
		h := newFamHarness(t)
		h.put(h.record(family.StateActive))
		cached := h.e.view.Load()
		h.put(h.record(family.StateActive)) // moves the store past the cache
		h.e.view.Store(cached)
		defer h.st.inject(&fault{op: "get", fail: errStoreDown})()
		_, _, err := h.b.acquire(h.ctx, h.e, always, nil)
		if !isUnavailable(err) {
			t.Fatalf("acquire: %v", err)
		}
	})
	t.Run("wait cut short", func(t *testing.T) {
		h := newFamHarness(t)
		h.put(takenBy(h.record(family.StateActive), other, h.clk.Now().Add(time.Minute)))
		ctx, cancel := context.WithTimeout(h.ctx, 20*time.Millisecond)
		defer cancel()
		if _, _, err := h.b.acquire(ctx, h.e, always, nil); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("acquire: %v", err)
		}
	})
	t.Run("store fails during the wait", func(t *testing.T) {
		h := newFamHarness(t)
		h.put(takenBy(h.record(family.StateActive), other, h.clk.Now().Add(time.Minute)))
		defer h.st.inject(&fault{op: "get", prefix: "families/", fail: errStoreDown})()
		if _, _, err := h.b.acquire(h.ctx, h.e, always, nil); !isUnavailable(err) {
			t.Fatalf("acquire: %v", err)
		}
	})
	t.Run("transient write error", func(t *testing.T) {
		h := newFamHarness(t)
		h.put(h.record(family.StateActive))
		h.st.inject(&fault{op: "put", prefix: "families/", once: true, fail: errStoreDown})
		if l, _, err := h.b.acquire(h.ctx, h.e, always, nil); err != nil || l == nil {
			t.Fatalf("acquire after one failed write: %v", err)
		}
	})
}

// A refresh started for a need that a revoked family no longer has (the
// scheduler's: "due while active") adopts the revoked family another
// replica stored; it answers REAUTHENTICATION_REQUIRED, never a view
// without a token for a caller sharing the flight.
func TestFlightEndingOnARevokedFamilyAnswersReauth(t *testing.T) {
	h := newFamHarness(t)
	h.put(h.record(family.StateActive))
	cached := h.e.view.Load()
	h.put(h.record(family.StateRevoked)) // another replica revoked it
	h.e.view.Store(cached)
	due := func(v *view) bool { return v.fam.Status == family.StatusActive }
	if v, err := h.b.refresh(h.ctx, h.e, nil, due); !isReauth(err) {
		t.Fatalf("refresh: %+v, %v; want ErrReauthRequired", v, err)
	}
	if h.prov.refreshes != 0 {
		t.Fatal("a revoked family's token was presented")
	}
}

// Only an idle family's refresh token is known to be the provider's
// current one: a claim, live or expired (its holder may have rotated the
// token before it stopped), or a doubt make the family not idle, for the
// periodic check and for the confirmation of a revocation alike.
func TestExpiredClaimIsNotIdle(t *testing.T) {
	h := newFamHarness(t)
	h.put(h.record(family.StateActive))
	seen := h.e.view.Load()
	if !h.b.detectable(h.e, seen, h.clk.Now()) || !family.StillSameLiveToken(seen.cred, seen.fam, seen.cred, seen.fam) {
		t.Fatal("an idle family is not checked")
	}
	for _, s := range []family.State{family.StateClaimed, family.StateInDoubt, family.StateInDoubtReleased} {
		fam := h.record(s)
		if fam.Claim != nil {
			fam.Claim = &family.Claim{Holder: other, Deadline: h.clk.Now().Add(-time.Minute)}
		}
		h.put(fam)
		cur := h.e.view.Load()
		if h.b.detectable(h.e, cur, h.clk.Now()) || family.StillSameLiveToken(seen.cred, seen.fam, cur.cred, cur.fam) {
			t.Errorf("%s with an expired claim: detectable %v, same live token %v; want neither",
				s, h.b.detectable(h.e, cur, h.clk.Now()), family.StillSameLiveToken(seen.cred, seen.fam, cur.cred, cur.fam))
		}
	}
}
