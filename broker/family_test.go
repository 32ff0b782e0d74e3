package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/notice"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store/memstore"
)

// Tests of a family's life at the level of its transitions: every row of
// the transition table driven through the broker (the stored record, the
// audit actions, the notices and the caller's error), every refused
// transition of the pure methods, and the refresh policy's table.

// me is the harness broker's replica id; other is another replica's.
const (
	me    = "replica-me"
	other = "replica-other"
)

// famHarness is one broker on a fault-injecting store with the scripted
// provider, and credential x.
type famHarness struct {
	t    *testing.T
	ctx  context.Context
	clk  *fakeclock.Clock
	st   *faultStore
	prov *scriptedProvider
	aud  *recordingAuditor
	b    *Broker
	e    *entry
}

func newFamHarness(t *testing.T) *famHarness {
	t.Helper()
	h := &famHarness{
		t: t, ctx: context.Background(),
		clk:  fakeclock.New(time.Now()), // claim deadlines bound real contexts
		st:   &faultStore{Store: memstore.New()},
		prov: &scriptedProvider{},
		aud:  &recordingAuditor{},
	}
	h.b = newBroker(t, Config{Store: h.st, Provider: h.prov, Auditor: h.aud}, replicaOpts(h.clk, option.WithReplicaID(me))...)
	// A provider killing the previous access token, so families have a
	// cutoff (cut_off).
	spec := credspec.Spec{ProviderKind: credspec.ProviderSalesforce, BaseURL: "http://127.0.0.1:1", ClientID: "c", ClientSecret: "s", Scopes: []string{"api", "refresh_token"},
		PreviousAccessToken: credspec.PreviousAccessRevoked}
	if _, err := h.b.Credentials().Create(h.ctx, "x", spec); err != nil {
		t.Fatal(err)
	}
	e, err := h.b.entry(h.ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	h.e = e
	return h
}

// record returns a record of family fam-1 at generation 3 in state s; a
// claim is this replica's.
func (h *famHarness) record(s family.State) *family.Record {
	now := h.clk.Now()
	active := &family.Record{
		Status: family.StatusActive, FamilyID: "fam-1", Generation: 3, RefreshToken: "rt-3", StartedAt: now.Add(-24 * time.Hour),
		Access: &family.AccessToken{Token: "at-3", Type: "Bearer", IssuedAt: now, ExpiresAt: now.Add(time.Hour), Fingerprint: access.Fingerprint("at-3")},
	}
	mine := &family.Claim{Holder: me, Deadline: now.Add(45 * time.Second)}
	switch s {
	case family.StateAwaitingReauth:
		return &family.Record{Status: family.StatusAwaitingReauth}
	case family.StateActive:
	case family.StateCutOff:
		// Four minutes left of an hour: past the scheduled rotation (5 min
		// 10 s before expiry) and its cutoff.
		active.Access.IssuedAt, active.Access.ExpiresAt = now.Add(-56*time.Minute), now.Add(4*time.Minute)
	case family.StateClaimed, family.StateHeld:
		active.Claim = mine
	case family.StateInDoubt:
		active.Claim, active.InDoubt = mine, true
	case family.StateInDoubtReleased:
		active.InDoubt = true
	case family.StateUnproven:
		active.Unproven, active.Generation, active.Access = true, 0, nil
	case family.StateRevoked:
		return &family.Record{Status: family.StatusRevoked, FamilyID: "fam-1", Generation: 3, RevokedReason: notice.ReasonRefreshTokenRejected, RevokedAt: now}
	case family.StateRevokedPendingProvider:
		return &family.Record{Status: family.StatusRevoked, FamilyID: "fam-1", Generation: 3, RevokedReason: notice.ReasonAdminRevoked, RevokedAt: now, PendingRevocation: "rt-3"}
	default:
		h.t.Fatalf("no record for state %s", s)
	}
	return active
}

// put stores fam as the family record, as another replica would, and lets
// the entry read it.
func (h *famHarness) put(fam *family.Record) {
	h.t.Helper()
	key := h.e.view.Load().cred.FamilyKey()
	var version uint64
	if rec, err := h.st.Store.Get(h.ctx, key); err == nil {
		version = rec.Version
	}
	fam.Format = recordFormat
	raw, err := json.Marshal(fam)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.st.Store.Put(h.ctx, key, raw, version); err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.b.readEntry(h.ctx, h.e); err != nil {
		h.t.Fatal(err)
	}
}

// in brings the family to state s; held goes through a result write that
// fails.
func (h *famHarness) in(s family.State) {
	h.t.Helper()
	if s == family.StateAwaitingReauth {
		return
	}
	h.put(h.record(s))
	if s == family.StateHeld {
		up := h.st.inject(&fault{op: "put", prefix: "families/", fail: errStoreDown})
		defer up()
		if _, err := h.lease().storeResult(h.ctx, rotation("rt-4")); err == nil {
			h.t.Fatal("the result write succeeded with the store down")
		}
	}
	if got := h.State(); got != s {
		h.t.Fatalf("set up %s, got %s", s, got)
	}
}

// lease is this replica's claim on the stored family.
func (h *famHarness) lease() *claimLease {
	return &claimLease{b: h.b, e: h.e, v: h.e.view.Load()}
}

// stored is the family record in the store.
func (h *famHarness) stored() *family.Record {
	h.t.Helper()
	fam := &family.Record{Status: family.StatusAwaitingReauth}
	rec, err := h.st.Store.Get(h.ctx, h.e.view.Load().cred.FamilyKey())
	if err != nil {
		return fam
	}
	if err := decodeRecord(rec.Value, fam, &fam.Format); err != nil {
		h.t.Fatal(err)
	}
	return fam
}

// state is the family's: the stored record's, or held.
func (h *famHarness) State() family.State {
	v := h.e.view.Load()
	return h.b.stateOf(h.b.newView(v.cred, v.credVersion, h.stored(), v.famVersion), h.e.rescue.Load() != nil)
}

// notices returns the notices in the store's log as "kind" or
// "revoked:reason".
func (h *famHarness) notices() []string {
	h.t.Helper()
	kept, err := notice.Kept(h.ctx, h.st.Store)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	for _, n := range kept {
		switch n.Kind {
		case notice.FamilyRevoked:
			out = append(out, "revoked:"+string(n.Reason))
		case notice.FamilyActivated:
			out = append(out, "activated")
		}
	}
	return out
}

func rotation(rt string) *provider.Token {
	return &provider.Token{AccessToken: "at-new", RefreshToken: rt, TokenType: "Bearer", ExpiresIn: time.Hour}
}

func always(*view) bool { return true }

// rowCase drives one transition and says what it must leave behind.
type rowCase struct {
	drive   func(h *famHarness) error
	audit   []string
	notices []string
	err     func(error) bool
}

func noErr(err error) bool { return err == nil }
func isUnavailable(err error) bool {
	var ue *brokererr.UnavailableError
	return errors.As(err, &ue)
}
func isReauth(err error) bool { return errors.Is(err, brokererr.ErrReauthRequired) }

// install installs a family as a code or device flow does, with the
// grant's tokens.
func install(h *famHarness) error {
	_, in, err := h.b.installFamily(h.ctx, h.e, "", "rt-installed", rotation("rt-installed"), true)
	if err == nil {
		in.logged()
	}
	return err
}

// importClaimed installs a refresh token as reauth import does, claimed for
// its proving refresh, before that refresh.
func importClaimed(h *famHarness) error {
	_, in, err := h.b.installFamily(h.ctx, h.e, "", "rt-imported", nil, false)
	if err != nil {
		return err
	}
	in.logged()
	if l := in.lease; l == nil || l.v.fam.Claim == nil || l.v.fam.Claim.Holder != me || !l.v.fam.Unproven {
		return fmt.Errorf("import left lease %+v, want this replica's claim on an unproven family", l)
	}
	return nil
}

func acquireLease(h *famHarness) error {
	l, _, err := h.b.acquire(h.ctx, h.e, always, nil)
	if err == nil && l == nil {
		return errors.New("acquire adopted a view instead of claiming")
	}
	return err
}

// takenOver puts s with another replica's expired claim, then claims.
func takenOver(s family.State) func(h *famHarness) error {
	return func(h *famHarness) error {
		fam := h.record(s)
		fam.Claim = &family.Claim{Holder: other, Deadline: h.clk.Now().Add(-time.Second)}
		h.put(fam)
		return acquireLease(h)
	}
}

// takenOverFromDead puts s with another replica's live claim, then claims
// on a store this broker has to itself.
func takenOverFromDead(s family.State) func(h *famHarness) error {
	return func(h *famHarness) error {
		fam := h.record(s)
		fam.Claim = &family.Claim{Holder: other, Deadline: h.clk.Now().Add(time.Minute)}
		h.put(fam)
		h.b.opts.ExclusiveStore = true
		return acquireLease(h)
	}
}

// refreshAnswered runs the refresh loop on the stored claim against one
// scripted answer.
func refreshAnswered(answer error) func(h *famHarness) error {
	return func(h *famHarness) error {
		h.prov.then(answer)
		_, err := h.b.refreshFamily(h.ctx, h.lease())
		return err
	}
}

// storeHeldAfter puts fam (another writer's) into the store, then writes the
// held rotation.
func storeHeldAfter(fam func(h *famHarness) *family.Record) func(h *famHarness) error {
	return func(h *famHarness) error {
		if fam != nil {
			h.put(fam(h))
		}
		_, err := h.b.storeRescue(h.ctx, h.e)
		return err
	}
}

func revokeDeliberately(h *famHarness) error {
	h.prov.revokeErr = answerNotProcessed
	res, err := h.b.RevokeCredential(h.ctx, "x", "rotate after a leak")
	if err == nil && res.ProviderRevocation != notice.ProviderRevocationUnconfirmed {
		return fmt.Errorf("provider revocation %v, want unconfirmed", res.ProviderRevocation)
	}
	return err
}

// TestEveryTransitionThroughTheBroker drives each row of the transition
// table through the broker's own entry points and checks the state left in
// the store (or held), the audit actions, the notices and the caller's
// error. A row without a case fails: a new transition needs its test.
func TestEveryTransitionThroughTheBroker(t *testing.T) {
	installed := rowCase{drive: install, audit: []string{audit.ActionReauthenticated}, notices: []string{"activated"}, err: noErr}
	claimed := rowCase{drive: acquireLease, err: noErr}
	takeover := func(s family.State) rowCase { return rowCase{drive: takenOver(s), err: noErr} }
	stored := rowCase{drive: func(h *famHarness) error {
		_, err := h.lease().storeResult(h.ctx, rotation("rt-4"))
		return err
	}, audit: []string{audit.ActionRotated}, err: noErr}
	released := rowCase{drive: func(h *famHarness) error { h.lease().release(h.ctx); return nil }, err: noErr}
	held := rowCase{drive: func(h *famHarness) error {
		defer h.st.inject(&fault{op: "put", prefix: "families/", fail: errStoreDown})()
		_, err := h.lease().storeResult(h.ctx, rotation("rt-4"))
		return err
	}, audit: []string{audit.ActionRescuedToken}, err: isUnavailable}
	deliberate := rowCase{drive: revokeDeliberately, audit: []string{audit.ActionFamilyRevoked}, notices: []string{"revoked:admin_revoked"}, err: noErr}
	rejected := func(reason notice.RevocationReason) rowCase {
		return rowCase{drive: refreshAnswered(answerInvalidGrant), audit: []string{audit.ActionFamilyRevoked}, notices: []string{"revoked:" + string(reason)}, err: isReauth}
	}
	newer := func(s family.State) func(h *famHarness) *family.Record {
		return func(h *famHarness) *family.Record {
			fam := h.record(s)
			fam.Generation, fam.RefreshToken = 4, "rt-takeover"
			return fam
		}
	}

	revokedAtProvider := rowCase{drive: func(h *famHarness) error {
		return confirmed(h.b.confirmRevokedAtProvider(h.ctx, h.e, h.e.view.Load(), "the test"))
	}, audit: []string{audit.ActionFamilyRevoked}, notices: []string{"revoked:revoked_at_provider"}, err: noErr}
	theirs := func(s family.State) func(h *famHarness) *family.Record {
		return func(h *famHarness) *family.Record {
			return takenBy(newer(s)(h), other, h.clk.Now().Add(time.Minute))
		}
	}

	cases := map[family.Transition]rowCase{
		{From: family.StateActive, Event: family.EvClaim, To: family.StateClaimed}:            claimed,
		{From: family.StateClaimed, Event: family.EvClaim, To: family.StateClaimed}:           claimed,
		{From: family.StateInDoubt, Event: family.EvClaim, To: family.StateInDoubt}:           claimed,
		{From: family.StateInDoubtReleased, Event: family.EvClaim, To: family.StateInDoubt}:   claimed,
		{From: family.StateClaimed, Event: family.EvTakeOver, To: family.StateInDoubt}:        takeover(family.StateClaimed),
		{From: family.StateInDoubt, Event: family.EvTakeOver, To: family.StateInDoubt}:        takeover(family.StateInDoubt),
		{From: family.StateClaimed, Event: family.EvMarkInDoubt, To: family.StateInDoubt}:     {drive: func(h *famHarness) error { return h.lease().markInDoubt(h.ctx) }, err: noErr},
		{From: family.StateClaimed, Event: family.EvStoreResult, To: family.StateActive}:      stored,
		{From: family.StateInDoubt, Event: family.EvStoreResult, To: family.StateActive}:      stored,
		{From: family.StateClaimed, Event: family.EvRelease, To: family.StateActive}:          released,
		{From: family.StateInDoubt, Event: family.EvRelease, To: family.StateInDoubtReleased}: released,

		{From: family.StateClaimed, Event: family.EvHold, To: family.StateHeld}:                    held,
		{From: family.StateInDoubt, Event: family.EvHold, To: family.StateHeld}:                    held,
		{From: family.StateHeld, Event: family.EvStoreHeld, To: family.StateActive}:                {drive: storeHeldAfter(nil), err: noErr},
		{From: family.StateHeld, Event: family.EvDropHeld, To: family.StateActive}:                 {drive: storeHeldAfter(newer(family.StateActive)), err: noErr},
		{From: family.StateHeld, Event: family.EvDropHeld, To: family.StateClaimed}:                {drive: storeHeldAfter(theirs(family.StateClaimed)), err: noErr},
		{From: family.StateHeld, Event: family.EvDropHeld, To: family.StateInDoubt}:                {drive: storeHeldAfter(theirs(family.StateInDoubt)), err: noErr},
		{From: family.StateHeld, Event: family.EvDropHeld, To: family.StateInDoubtReleased}:        {drive: storeHeldAfter(newer(family.StateInDoubtReleased)), err: noErr},
		{From: family.StateHeld, Event: family.EvDropHeld, To: family.StateRevoked}:                {drive: storeHeldAfter(func(h *famHarness) *family.Record { return h.record(family.StateRevoked) }), err: noErr},
		{From: family.StateHeld, Event: family.EvDropHeld, To: family.StateRevokedPendingProvider}: {drive: storeHeldAfter(func(h *famHarness) *family.Record { return h.record(family.StateRevokedPendingProvider) }), err: noErr},
		{From: family.StateActive, Event: family.EvRevoke, To: family.StateRevoked}:                revokedAtProvider,
		{From: family.StateCutOff, Event: family.EvRevoke, To: family.StateRevoked}:                revokedAtProvider,
		{From: family.StateActive, Event: family.EvReachCutoff, To: family.StateCutOff}: {drive: func(h *famHarness) error {
			h.clk.Add(time.Hour - 5*time.Minute)
			return nil
		}, err: noErr},
		{From: family.StateCutOff, Event: family.EvClaim, To: family.StateClaimed}: claimed,
		{From: family.StateActive, Event: family.EvNotePreviousAccess, To: family.StateActive}: {drive: func(h *famHarness) error {
			if err := h.b.notePreviousAccess(h.ctx, h.e, "fam-1", credspec.PreviousAccessKept); err != nil {
				return err
			}
			if f := h.stored(); f.PreviousAccess != credspec.PreviousAccessKept {
				return fmt.Errorf("recorded %q, want kept", f.PreviousAccess)
			}
			return nil
		}, err: noErr},
		{From: family.StateCutOff, Event: family.EvRevokeDeliberately, To: family.StateRevokedPendingProvider}:          deliberate,
		{From: family.StateClaimed, Event: family.EvRevoke, To: family.StateRevoked}:                                    rejected(notice.ReasonRefreshTokenRejected),
		{From: family.StateInDoubt, Event: family.EvRevoke, To: family.StateRevoked}:                                    rejected(notice.ReasonLostRotation),
		{From: family.StateInDoubtReleased, Event: family.EvRevoke, To: family.StateRevoked}:                            {drive: revokeAfterTakeoverAndRelease, audit: []string{audit.ActionFamilyRevoked}, notices: []string{"revoked:refresh_token_rejected"}, err: isReauth},
		{From: family.StateActive, Event: family.EvRevokeDeliberately, To: family.StateRevokedPendingProvider}:          deliberate,
		{From: family.StateClaimed, Event: family.EvRevokeDeliberately, To: family.StateRevokedPendingProvider}:         deliberate,
		{From: family.StateInDoubt, Event: family.EvRevokeDeliberately, To: family.StateRevokedPendingProvider}:         deliberate,
		{From: family.StateInDoubtReleased, Event: family.EvRevokeDeliberately, To: family.StateRevokedPendingProvider}: deliberate,
		{From: family.StateRevokedPendingProvider, Event: family.EvConfirmProviderRevocation, To: family.StateRevoked}: {drive: func(h *famHarness) error {
			res, err := h.b.RevokeCredential(h.ctx, "x", "retry at the provider")
			if err == nil && (!res.AlreadyRevoked || res.ProviderRevocation != notice.ProviderRevocationConfirmed) {
				return fmt.Errorf("revocation %+v, want already revoked, confirmed", res)
			}
			return err
		}, audit: []string{audit.ActionFamilyRevoked}, err: noErr},
	}
	// take_over_dead: another holder's live claim, on an exclusive store.
	for _, from := range []family.State{family.StateClaimed, family.StateInDoubt} {
		cases[family.Transition{From: from, Event: family.EvTakeOverDead, To: family.StateInDoubt}] = rowCase{drive: takenOverFromDead(from), err: noErr}
	}
	// unproven: an imported token until a refresh proves it.
	cases[family.Transition{From: family.StateUnproven, Event: family.EvClaim, To: family.StateClaimed}] = claimed
	cases[family.Transition{From: family.StateClaimed, Event: family.EvRelease, To: family.StateUnproven}] = rowCase{drive: func(h *famHarness) error {
		fam := h.record(family.StateClaimed)
		fam.Unproven = true
		h.put(fam)
		h.lease().release(h.ctx)
		return nil
	}, err: noErr}
	cases[family.Transition{From: family.StateUnproven, Event: family.EvRevokeDeliberately, To: family.StateRevokedPendingProvider}] = deliberate
	// Reauthenticate installs a family the same way from every state: an
	// import unproven and claimed for its proving refresh, the other flows
	// active.
	imported := rowCase{drive: importClaimed, audit: []string{audit.ActionReauthenticated}, notices: []string{"activated"}, err: noErr}
	for _, row := range family.Transitions() {
		switch {
		case row.Event == family.EvInstall && row.To == family.StateClaimed:
			cases[family.Transition{From: row.From, Event: row.Event, To: row.To}] = imported
		case row.Event == family.EvInstall:
			cases[family.Transition{From: row.From, Event: row.Event, To: row.To}] = installed
		}
	}
	for _, row := range family.Transitions() {
		key := family.Transition{From: row.From, Event: row.Event, To: row.To}
		t.Run(fmt.Sprintf("%s/%s/%s", row.From, row.Event, row.To), func(t *testing.T) {
			c, ok := cases[key]
			if !ok {
				t.Fatal("no test drives this transition")
			}
			h := newFamHarness(t)
			h.in(row.From)
			audits, notices := h.aud.len(), len(h.notices())
			err := c.drive(h)
			if !c.err(err) {
				t.Errorf("caller's error: %v", err)
			}
			if got := h.State(); got != row.To {
				t.Errorf("state after %s: %s, want %s", row.Event, got, row.To)
			}
			if got := h.aud.actionsSince(audits); !slices.Equal(got, c.audit) {
				t.Errorf("audit actions %v, want %v", got, c.audit)
			}
			if got := h.notices()[notices:]; !slices.Equal(got, c.notices) {
				t.Errorf("notices %v, want %v", got, c.notices)
			}
		})
	}
}

func confirmed(revoked bool, err error) error {
	if err == nil && !revoked {
		return errors.New("not revoked")
	}
	return err
}

// revokeAfterTakeoverAndRelease: this replica's refresh meets invalid_grant
// while another replica took its claim over and released it, in doubt, at
// the same generation: the revocation decides again on that state.
func revokeAfterTakeoverAndRelease(h *famHarness) error {
	l := h.lease()
	h.put(h.record(family.StateInDoubtReleased))
	h.prov.then(answerInvalidGrant)
	_, err := h.b.refreshFamily(h.ctx, l)
	return err
}

// The pure transition methods refuse exactly what the table does not list.
func TestTransitionMethodsRefuseWhatTheTableDoesNotAllow(t *testing.T) {
	h := newFamHarness(t)
	now := h.clk.Now()
	type method struct {
		event family.Event
		apply func(f *family.Record) (*family.Record, error)
	}
	methods := []method{
		{family.EvClaim, func(f *family.Record) (*family.Record, error) { return f.ClaimedBy(me, now.Add(time.Minute), now) }},
		{family.EvMarkInDoubt, (*family.Record).MarkedInDoubt},
		{family.EvStoreResult, func(f *family.Record) (*family.Record, error) {
			return f.Rotated(family.RefreshResult{Now: now, RefreshToken: "rt-4", Access: &family.AccessToken{Token: "at-4"}})
		}},
		{family.EvRelease, func(f *family.Record) (*family.Record, error) { return f.Released(me) }},
		{family.EvRevoke, func(f *family.Record) (*family.Record, error) {
			return f.Revoked(notice.ReasonRefreshTokenRejected, "d", now)
		}},
		{family.EvRevokeDeliberately, func(f *family.Record) (*family.Record, error) { return f.Revoked(notice.ReasonAdminRevoked, "d", now) }},
		{family.EvConfirmProviderRevocation, (*family.Record).ProviderConfirmed},
		{family.EvInstall, func(f *family.Record) (*family.Record, error) {
			return f.ReplacedBy(&family.Record{Status: family.StatusActive, FamilyID: "fam-2", RefreshToken: "rt-new"})
		}},
	}
	hasRow := func(from family.State, ev family.Event) bool {
		return slices.ContainsFunc(family.Transitions(), func(t family.Transition) bool { return t.From == from && t.Event == ev })
	}
	for s := range family.NumStates {
		if s == family.StateHeld || s == family.StateCutOff {
			// held is in memory, cut_off an active record past a time: no
			// record is in either (TestCutOffAllowsWhatActiveAllows).
			continue
		}
		for _, m := range methods {
			f := h.record(s)
			before := *f
			next, err := m.apply(f)
			var te *family.TransitionError
			switch {
			case hasRow(s, m.event) && err != nil:
				t.Errorf("%s on %s: %v, want allowed", m.event, s, err)
			case hasRow(s, m.event) && !family.Allowed(s, m.event, next.State()):
				t.Errorf("%s on %s led to %s, which the table does not list", m.event, s, next.State())
			case !hasRow(s, m.event) && !errors.As(err, &te):
				t.Errorf("%s on %s: %v, want a *family.TransitionError", m.event, s, err)
			}
			if f.Claim != before.Claim || f.Status != before.Status || f.InDoubt != before.InDoubt || f.Generation != before.Generation {
				t.Errorf("%s changed the record it was called on", m.event)
			}
		}
	}

	// Claims of another replica: taken over once expired, never before.
	fam := h.record(family.StateClaimed)
	fam.Claim = &family.Claim{Holder: other, Deadline: now.Add(time.Second)}
	var te *family.TransitionError
	if _, err := fam.ClaimedBy(me, now.Add(time.Minute), now); !errors.As(err, &te) || te.Event != family.EvTakeOver || te.Why == "" {
		t.Errorf("claiming over a live claim: %v, want a refused take_over", err)
	}
	next, err := fam.ClaimedBy(me, now.Add(time.Minute), now.Add(time.Second))
	if err != nil || next.State() != family.StateInDoubt || next.Claim.Holder != me {
		t.Errorf("taking over an expired claim: %+v %v, want in doubt, ours", next, err)
	}
	if _, err := fam.Released(me); !errors.As(err, &te) || te.Error() == "" {
		t.Errorf("releasing another replica's claim: %v, want refused", err)
	}
	if s := family.State(99).String(); s != "family.State(99)" {
		t.Errorf("unknown state prints %q", s)
	}
	if s := family.Event(99).String(); s != "family.Event(99)" {
		t.Errorf("unknown event prints %q", s)
	}
}

// The refresh policy as a table: the family's state and the attempt,
// times the provider's answer, give the action.
func TestDecideRefresh(t *testing.T) {
	now := time.Date(2026, 5, 4, 9, 0, 0, 0, time.UTC)
	wrapped := fmt.Errorf("context: %w", answerInvalidGrant)
	tempRefusal := &provider.Error{Op: "refresh", Outcome: provider.OutcomeRejected, StatusCode: 429, Code: "rate_limit_exceeded", RetryAfter: 3 * time.Second}
	tests := []struct {
		name    string
		a       family.Attempt
		answer  error
		want    family.Action
		inDoubt bool
		reason  notice.RevocationReason
		err     func(error) bool
	}{
		{"ok", family.Attempt{State: family.StateClaimed}, nil, family.ActionStore, false, "", nil},
		{"ok in doubt", family.Attempt{State: family.StateInDoubt, N: 1}, nil, family.ActionStore, false, "", nil},
		{"unclassified failure", family.Attempt{State: family.StateClaimed}, errors.New("boom"), family.ActionGiveUp, false, "", isUnavailable},
		{"invalid_grant", family.Attempt{State: family.StateClaimed}, answerInvalidGrant, family.ActionRevoke, false, notice.ReasonRefreshTokenRejected, nil},
		{"invalid_grant wrapped", family.Attempt{State: family.StateClaimed}, wrapped, family.ActionRevoke, false, notice.ReasonRefreshTokenRejected, nil},
		{"invalid_grant in doubt", family.Attempt{State: family.StateInDoubt}, answerInvalidGrant, family.ActionRevoke, false, notice.ReasonLostRotation, nil},
		{"client refused", family.Attempt{State: family.StateClaimed}, answerBadClient, family.ActionRecheckClient, false, "", isClientRejected},
		{"client refused again", family.Attempt{State: family.StateClaimed, ClientRechecked: true}, answerBadClient, family.ActionGiveUp, false, "", isClientRejected},
		{"unknown, first attempt", family.Attempt{State: family.StateClaimed}, answerUnknown, family.ActionRetry, true, "", nil},
		{"unknown, already in doubt", family.Attempt{State: family.StateInDoubt}, answerUnknown, family.ActionRetry, false, "", nil},
		{"unknown again, no grace", family.Attempt{State: family.StateInDoubt, N: 1, Now: now, UnknownSince: now}, answerUnknown, family.ActionGiveUp, false, "", isUnavailable},
		{"unknown again, within grace", family.Attempt{State: family.StateInDoubt, N: 3, Now: now.Add(10 * time.Second), UnknownSince: now, Grace: 30 * time.Second}, answerUnknown, family.ActionRetry, false, "", nil},
		{"unknown again, grace half gone", family.Attempt{State: family.StateInDoubt, N: 3, Now: now.Add(15 * time.Second), UnknownSince: now, Grace: 30 * time.Second}, answerUnknown, family.ActionGiveUp, false, "", isUnavailable},
		{"not processed", family.Attempt{State: family.StateClaimed, NotProcessedTries: 4}, answerNotProcessed, family.ActionRetry, false, "", nil},
		{"temporary refusal", family.Attempt{State: family.StateClaimed, N: 2, NotProcessedTries: 4}, tempRefusal, family.ActionRetry, false, "", nil},
		{"not processed, last try", family.Attempt{State: family.StateClaimed, N: 3, NotProcessedTries: 4}, answerNotProcessed, family.ActionGiveUp, false, "", isUnavailable},
		{"not processed in doubt", family.Attempt{State: family.StateInDoubt, N: 1, NotProcessedTries: 4}, answerNotProcessed, family.ActionRetry, false, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := family.Decide(tt.a, tt.answer)
			if d.Action != tt.want || d.MarkInDoubt != tt.inDoubt || d.Reason != tt.reason {
				t.Fatalf("decision %s (in doubt %v, reason %q), want %s (%v, %q)", d.Action, d.MarkInDoubt, d.Reason, tt.want, tt.inDoubt, tt.reason)
			}
			if tt.err == nil && d.Err != nil && d.Action != family.ActionRecheckClient {
				t.Errorf("error %v, want none", d.Err)
			}
			if tt.err != nil && !tt.err(d.Err) {
				t.Errorf("error %v", d.Err)
			}
		})
	}
	// A temporary refusal's Retry-After is the least wait, also in the error
	// of the last try.
	if d := family.Decide(family.Attempt{State: family.StateClaimed, NotProcessedTries: 4}, tempRefusal); d.BackoffAtLeast != 3*time.Second {
		t.Errorf("backoff at least %s, want the provider's 3s", d.BackoffAtLeast)
	}
	var ue *brokererr.UnavailableError
	if d := family.Decide(family.Attempt{State: family.StateClaimed, N: 3, NotProcessedTries: 4}, tempRefusal); !errors.As(d.Err, &ue) || ue.RetryAfter != 3*time.Second {
		t.Errorf("last try's error %v, want retry after 3s", d.Err)
	}
	for o := family.OutcomeOK; o <= family.OutcomeNotProcessed; o++ {
		if o.String() == "" {
			t.Errorf("outcome %d has no name", o)
		}
	}
	for a := family.ActionStore; a <= family.ActionGiveUp; a++ {
		if a.String() == "" {
			t.Errorf("action %d has no name", a)
		}
	}
}

func isClientRejected(err error) bool { return errors.Is(err, brokererr.ErrClientRejected) }
