package family

import (
	"fmt"
	"slices"
	"time"

	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/notice"
)

// A token family's life, in one place: the states a family can be in, the
// events that move it, the table of allowed transitions and the pure
// methods that compute the next record (refusing what the table does not
// allow). The broker's updateFamily is the one writer of family records.
//
// A state is derived from the stored record (Record.State), except
// StateHeld, which lives in a replica's memory (the broker's entry.rescue):
// a rotated family the store has not accepted yet. A new state (a serving
// cutoff before a scheduled rotation, an imported token not yet proven by a
// refresh) is a constant here, a case in State(), a line in states and rows
// in transitions; the protocol document's state list and diagram are
// generated from those (TestProtocolDocMatchesTransitionTable).

// State names one state of a token family.
type State int

const (
	// StateAwaitingReauth: no family was ever installed.
	StateAwaitingReauth State = iota
	// StateActive: a family nobody is refreshing and no refresh left in
	// doubt: idle.
	StateActive
	// StateClaimed: a replica holds the refresh claim.
	StateClaimed
	// StateInDoubt: a replica holds the claim, and a refresh of this
	// generation may have rotated the token at the provider without its
	// answer arriving (an unknown outcome, or a takeover from a holder that
	// died or stalled).
	StateInDoubt
	// StateInDoubtReleased: in doubt, the claim given up (the retry was not
	// allowed or failed too): the next refresh claims it in doubt.
	StateInDoubtReleased
	// StateRevoked: the family is dead; only a reauthentication helps.
	StateRevoked
	// StateRevokedPendingProvider: revoked deliberately here, its refresh
	// token kept only to retry the revocation at the provider, which has not
	// confirmed it.
	StateRevokedPendingProvider
	// StateHeld: a rotated family the store did not accept, held in this
	// replica's memory (entry.rescue) and written before anything else; the
	// store still shows the claim.
	StateHeld
	// StateUnproven: an imported refresh token, stored, that no refresh has
	// proven yet (the provider could not be reached); refreshed again by
	// the scheduler and by callers.
	StateUnproven
	// StateCutOff: active, and the clock is past the access token's cutoff
	// at a provider that kills the previous access token (cutoff.go): no
	// replica hands the token out; callers wait for the rotation. Derived
	// from the record and the clock (Record.StateAt), never written.
	StateCutOff
	NumStates
)

// stateInfo names and explains a state for the protocol document.
type stateInfo struct {
	name, meaning string
}

var states = [NumStates]stateInfo{
	StateAwaitingReauth:         {"awaiting_reauthentication", "no family installed yet (`status` awaiting_reauthentication)"},
	StateActive:                 {"active", "idle: `status` active, no `claim`, not `in_doubt`"},
	StateClaimed:                {"claimed", "a replica refreshes: `claim` = {holder, deadline}; with `unproven` too while an import's proving refresh runs (or its holder died: the claim is taken over at its deadline like any other)"},
	StateInDoubt:                {"in_doubt", "`claim` and `in_doubt`: a refresh of this generation may have rotated the token without its answer arriving (an unknown outcome, or a takeover from a holder that died); an invalid_grant now is a lost rotation"},
	StateInDoubtReleased:        {"in_doubt_released", "`in_doubt` without a claim: the holder gave up after an unknown outcome; the next claim stays in doubt"},
	StateRevoked:                {"revoked", "`status` revoked with `revoked_reason`; no tokens kept"},
	StateRevokedPendingProvider: {"revoked_pending_provider", "revoked deliberately, the provider has not confirmed revoking the refresh token: it is kept in `pending_revocation` (never presented to the token endpoint) so RevokeCredential can retry"},
	StateHeld:                   {"held", "in memory only: a rotated family the store did not accept; the store still shows the claim, the older token is never presented again, and the write is retried before any other refresh"},
	StateUnproven:               {"unproven", "`status` active and `unproven`, no claim: an imported refresh token stored but not yet proven by a refresh (`credentials show`: unproven); the proving refresh is retried"},
	StateCutOff:                 {"cut_off", "`status` active, idle, the clock past the access token's cutoff (its scheduled rotation computed from the record, minus min(500 ms, lifetime/40)) at a provider that kills the previous access token: no replica hands the token out, callers wait for the rotation; derived from the record and the clock, never written"},
}

func (s State) String() string {
	if s >= 0 && s < NumStates {
		return states[s].name
	}
	return fmt.Sprintf("family.State(%d)", int(s))
}

// Meaning explains s for the protocol document.
func (s State) Meaning() string {
	if s >= 0 && s < NumStates {
		return states[s].meaning
	}
	return ""
}

// Event names what moves a family from one state to another.
type Event int

const (
	// EvInstall: Reauthenticate (code, device, import) installs a new family.
	EvInstall Event = iota
	// EvClaim: this replica claims the refresh (check-and-set, write 1).
	EvClaim
	// EvTakeOver: another replica's claim passed its deadline; this one
	// claims in its place, in doubt.
	EvTakeOver
	// EvMarkInDoubt: a refresh's outcome is unknown; recorded before any
	// retry.
	EvMarkInDoubt
	// EvStoreResult: the provider answered a new token; stored with
	// check-and-set on the claim's version (write 2).
	EvStoreResult
	// EvRelease: the holder gives up without a result.
	EvRelease
	// EvHold: the result write failed after the provider rotated.
	EvHold
	// EvStoreHeld: a held rotation was written.
	EvStoreHeld
	// EvDropHeld: a held rotation met a newer state in the store, which
	// wins.
	EvDropHeld
	// EvRevoke: the provider refused the refresh token (invalid_grant), or
	// introspection found it revoked there.
	EvRevoke
	// EvRevokeDeliberately: RevokeCredential.
	EvRevokeDeliberately
	// EvConfirmProviderRevocation: the provider confirmed revoking the
	// pending token.
	EvConfirmProviderRevocation
	// EvTakeOverDead: on an exclusive store (WithExclusiveStore), another
	// holder's claim is a previous process's, which died: this replica
	// claims in its place at once, in doubt.
	EvTakeOverDead
	// EvReachCutoff: the clock passes the access token's cutoff (no write).
	EvReachCutoff
	// EvNotePreviousAccess: introspection after a rotation found whether
	// the provider killed the previous access token.
	EvNotePreviousAccess
	NumEvents
)

var eventNames = [NumEvents]string{
	EvInstall:                   "install",
	EvClaim:                     "claim",
	EvTakeOver:                  "take_over",
	EvMarkInDoubt:               "mark_in_doubt",
	EvStoreResult:               "store_result",
	EvRelease:                   "release",
	EvHold:                      "hold",
	EvStoreHeld:                 "store_held",
	EvDropHeld:                  "drop_held",
	EvRevoke:                    "revoke",
	EvRevokeDeliberately:        "revoke_deliberately",
	EvConfirmProviderRevocation: "confirm_provider_revocation",
	EvTakeOverDead:              "take_over_dead",
	EvReachCutoff:               "reach_cutoff",
	EvNotePreviousAccess:        "note_previous_access",
}

func (e Event) String() string {
	if e >= 0 && e < NumEvents {
		return eventNames[e]
	}
	return fmt.Sprintf("family.Event(%d)", int(e))
}

// Transition is one allowed change of state.
type Transition struct {
	From  State
	Event Event
	To    State
	// Why says when it happens, for the protocol document.
	Why string
}

// transitions is every change of state a family may go through; anything
// else is refused (*TransitionError). Read-only: Transitions hands out
// copies.
var transitions = []Transition{
	{StateAwaitingReauth, EvInstall, StateActive, "Reauthenticate"},
	{StateActive, EvInstall, StateActive, "Reauthenticate: a new family replaces this one (revoked at the provider for code and device flows)"},
	{StateClaimed, EvInstall, StateActive, "Reauthenticate during a refresh: the holder's result write then conflicts"},
	{StateInDoubt, EvInstall, StateActive, "Reauthenticate"},
	{StateInDoubtReleased, EvInstall, StateActive, "Reauthenticate"},
	{StateRevoked, EvInstall, StateActive, "Reauthenticate"},
	{StateRevokedPendingProvider, EvInstall, StateActive, "Reauthenticate; the pending token is revoked at the provider (code and device flows)"},
	{StateHeld, EvInstall, StateActive, "Reauthenticate: the held rotation is dropped"},

	{StateActive, EvClaim, StateClaimed, "a token is needed: CAS claim {holder, now + 45 s} (write 1)"},
	{StateClaimed, EvClaim, StateClaimed, "this replica's own earlier claim, not released: claimed again"},
	{StateInDoubt, EvClaim, StateInDoubt, "this replica's own earlier claim, in doubt: claimed again"},
	{StateInDoubtReleased, EvClaim, StateInDoubt, "the next refresh after an unknown outcome"},
	{StateClaimed, EvTakeOver, StateInDoubt, "the holder's deadline passed (it died or stalled, maybe after the provider rotated)"},
	{StateInDoubt, EvTakeOver, StateInDoubt, "the holder's deadline passed"},

	{StateClaimed, EvMarkInDoubt, StateInDoubt, "answer lost, timeout, 5xx: CAS in_doubt before the one retry"},
	{StateClaimed, EvStoreResult, StateActive, "provider OK: CAS result on the claim's version (write 2), generation + 1"},
	{StateInDoubt, EvStoreResult, StateActive, "provider OK (the retry, or a grace period): generation + 1, doubt cleared"},
	{StateClaimed, EvRelease, StateActive, "not processed, client refused, gave up: CAS release"},
	{StateInDoubt, EvRelease, StateInDoubtReleased, "no retry allowed after an unknown outcome: CAS release, doubt kept"},

	{StateClaimed, EvHold, StateHeld, "the result write failed after the provider rotated: held in memory, UNAVAILABLE"},
	{StateInDoubt, EvHold, StateHeld, "the result write failed after the provider rotated"},
	{StateHeld, EvStoreHeld, StateActive, "the held rotation is written (before any other refresh, on every scheduler tick from the next one on, at shutdown)"},
	{StateHeld, EvDropHeld, StateActive, "the store moved on (a takeover's rotation after the claim ran out, or the write landed with its answer lost): the store's state wins"},
	{StateHeld, EvDropHeld, StateClaimed, "the store moved on and another replica refreshes again: the store's state wins"},
	{StateHeld, EvDropHeld, StateInDoubt, "another replica took the claim over and is still refreshing: the store's state wins"},
	{StateHeld, EvDropHeld, StateInDoubtReleased, "another replica took the claim over and gave up in doubt: the store's state wins"},
	{StateHeld, EvDropHeld, StateRevoked, "the family was revoked meanwhile: the store's state wins"},
	{StateHeld, EvDropHeld, StateRevokedPendingProvider, "the family was revoked deliberately meanwhile: the store's state wins"},

	{StateActive, EvRevoke, StateRevoked, "introspection: the refresh token is inactive at the provider (REVOKED_AT_PROVIDER)"},
	{StateClaimed, EvRevoke, StateRevoked, "invalid_grant without doubt (REFRESH_TOKEN_REJECTED)"},
	{StateInDoubt, EvRevoke, StateRevoked, "invalid_grant after an unknown outcome or a takeover (LOST_ROTATION, not theft)"},
	{StateInDoubtReleased, EvRevoke, StateRevoked, "invalid_grant met by a holder whose claim another replica took over and released meanwhile"},
	{StateActive, EvRevokeDeliberately, StateRevokedPendingProvider, "RevokeCredential (ADMIN_REVOKED): store first, then the provider"},
	{StateClaimed, EvRevokeDeliberately, StateRevokedPendingProvider, "RevokeCredential during a refresh: the holder's result write conflicts and finds the family revoked"},
	{StateInDoubt, EvRevokeDeliberately, StateRevokedPendingProvider, "RevokeCredential"},
	{StateInDoubtReleased, EvRevokeDeliberately, StateRevokedPendingProvider, "RevokeCredential"},
	{StateRevokedPendingProvider, EvConfirmProviderRevocation, StateRevoked, "the provider confirmed (now, or when RevokeCredential is called again)"},

	{StateClaimed, EvTakeOverDead, StateInDoubt, "embedded store: the file lock proves the holder (a previous process) dead, so its claim is taken over at once after a restart"},
	{StateInDoubt, EvTakeOverDead, StateInDoubt, "embedded store: the holder was a previous process"},

	{StateAwaitingReauth, EvInstall, StateClaimed, "reauth import: the token is stored `unproven` and claimed by the importing replica in one write, then its proving refresh runs under that claim (the install is write 1)"},
	{StateActive, EvInstall, StateClaimed, "reauth import"},
	{StateClaimed, EvInstall, StateClaimed, "reauth import during a refresh: the holder's result write then conflicts"},
	{StateInDoubt, EvInstall, StateClaimed, "reauth import"},
	{StateInDoubtReleased, EvInstall, StateClaimed, "reauth import"},
	{StateRevoked, EvInstall, StateClaimed, "reauth import"},
	{StateRevokedPendingProvider, EvInstall, StateClaimed, "reauth import"},
	{StateHeld, EvInstall, StateClaimed, "reauth import: the held rotation is dropped"},
	{StateUnproven, EvInstall, StateClaimed, "reauth import again"},
	{StateUnproven, EvInstall, StateActive, "Reauthenticate with a code or device flow"},
	{StateUnproven, EvClaim, StateClaimed, "the proving refresh retried (a caller, the scheduler)"},
	{StateClaimed, EvRelease, StateUnproven, "the proving refresh could not reach the provider: stored, not yet proven; retried"},
	{StateUnproven, EvRevokeDeliberately, StateRevokedPendingProvider, "RevokeCredential"},
	{StateActive, EvReachCutoff, StateCutOff, "the clock passes the cutoff every replica computes from the record alike (no write); a provider that keeps the previous access token has none"},
	{StateCutOff, EvClaim, StateClaimed, "a caller past the cutoff, or the scheduler, claims the rotation; callers on every replica wait for its result"},
	{StateCutOff, EvInstall, StateActive, "Reauthenticate with a code or device flow"},
	{StateCutOff, EvInstall, StateClaimed, "reauth import"},
	{StateCutOff, EvRevoke, StateRevoked, "introspection: the refresh token is inactive at the provider (REVOKED_AT_PROVIDER)"},
	{StateCutOff, EvRevokeDeliberately, StateRevokedPendingProvider, "RevokeCredential"},
	{StateActive, EvNotePreviousAccess, StateActive, "generic provider with an introspection endpoint, previous_access_token unset: the access token a rotation replaced was introspected; whether it died is recorded (not once the new token is past its cutoff), and replicas apply or drop the cutoff alike"},
}

// Transitions returns a copy of the table, in its order.
func Transitions() []Transition { return slices.Clone(transitions) }

// Allowed reports whether the table has from --event--> to.
func Allowed(from State, ev Event, to State) bool {
	for _, t := range transitions {
		if t.From == from && t.Event == ev && t.To == to {
			return true
		}
	}
	return false
}

// TransitionError is a change of state the table does not allow.
type TransitionError struct {
	From  State
	Event Event
	To    State
	// Why, when set, is a precondition of the event that failed.
	Why string
}

func (e *TransitionError) Error() string {
	if e.Why != "" {
		return fmt.Sprintf("broker: family transition %s on %s refused: %s", e.Event, e.From, e.Why)
	}
	return fmt.Sprintf("broker: family transition %s --%s--> %s not allowed", e.From, e.Event, e.To)
}

// State is the record's state as stored.
func (f *Record) State() State {
	switch f.Status {
	case StatusActive:
		switch {
		case f.Claim != nil && f.InDoubt:
			return StateInDoubt
		case f.Claim != nil:
			return StateClaimed
		case f.InDoubt:
			return StateInDoubtReleased
		case f.Unproven:
			return StateUnproven
		}
		return StateActive
	case StatusRevoked:
		if f.PendingRevocation != "" {
			return StateRevokedPendingProvider
		}
		return StateRevoked
	}
	return StateAwaitingReauth
}

// StateAt is the record's state at now, for a token whose cutoff is
// cutoff (zero: none): StateCutOff once an idle family's token passed it.
func (f *Record) StateAt(cutoff, now time.Time) State {
	s := f.State()
	if s == StateActive && !cutoff.IsZero() && !now.Before(cutoff) {
		return StateCutOff
	}
	return s
}

// StateOf is the state of an entry's family: the stored one, or
// StateHeld while a rotation waits in memory.
func StateOf(fam *Record, held bool) State {
	if held {
		return StateHeld
	}
	return fam.State()
}

// Idle reports whether nothing is happening to the family: active, no claim
// (live or expired: a holder that stopped may have rotated the token at the
// provider already) and no doubt. Only an idle family's refresh token is
// known to be the provider's current one.
func (f *Record) Idle() bool { return f.State() == StateActive }

// to returns next if the table allows f --ev--> next. A family past its
// cutoff is active in its record: the table allows every stored event from
// cut_off that it allows from active.
func (f *Record) to(ev Event, next *Record) (*Record, error) {
	if from, to := f.State(), next.State(); !Allowed(from, ev, to) {
		return nil, &TransitionError{From: from, Event: ev, To: to}
	}
	return next, nil
}

// ClaimedBy returns f claimed by holder until deadline: a claim of its own,
// or a takeover (in doubt) of another holder's claim whose deadline passed
// by now.
func (f *Record) ClaimedBy(holder string, deadline, now time.Time) (*Record, error) {
	next := f.Clone()
	ev := EvClaim
	if c := f.Claim; c != nil && c.Holder != holder {
		if now.Before(c.Deadline) {
			return nil, &TransitionError{From: f.State(), Event: EvTakeOver, To: StateInDoubt, Why: "the holder's claim has not expired"}
		}
		// The holder may have presented the token already: an invalid_grant
		// now is a lost rotation, not theft.
		ev, next.InDoubt = EvTakeOver, true
	}
	next.Claim = &Claim{Holder: holder, Deadline: deadline}
	return f.to(ev, next)
}

// TakenOverFromDead returns f claimed by holder until deadline, in doubt,
// whatever the deadline of the other holder's claim: on an exclusive store
// that holder was a previous process, and it died (it may have presented
// the token first).
func (f *Record) TakenOverFromDead(holder string, deadline time.Time) (*Record, error) {
	if c := f.Claim; c == nil || c.Holder == holder {
		return nil, &TransitionError{From: f.State(), Event: EvTakeOverDead, To: StateInDoubt, Why: "no other holder's claim"}
	}
	next := f.Clone()
	next.InDoubt = true
	next.Claim = &Claim{Holder: holder, Deadline: deadline}
	return f.to(EvTakeOverDead, next)
}

// MarkedInDoubt returns f with its refresh in doubt.
func (f *Record) MarkedInDoubt() (*Record, error) {
	next := f.Clone()
	next.InDoubt = true
	return f.to(EvMarkInDoubt, next)
}

// Released returns f without holder's claim; a doubt stays.
func (f *Record) Released(holder string) (*Record, error) {
	if f.Claim == nil || f.Claim.Holder != holder {
		return nil, &TransitionError{From: f.State(), Event: EvRelease, To: f.State(), Why: "not the holder's claim"}
	}
	next := f.Clone()
	next.Claim = nil
	return f.to(EvRelease, next)
}

// RefreshResult is what a successful refresh brings to the record.
type RefreshResult struct {
	Now time.Time
	// RefreshToken is the provider's new refresh token; "" when it did not
	// rotate (a legacy app keeps its token).
	RefreshToken string
	Access       *AccessToken
	// LastError flags the credential (a response signature mismatch).
	LastError string
}

// Rotated returns f after a successful refresh: generation + 1, no claim,
// no doubt.
func (f *Record) Rotated(r RefreshResult) (*Record, error) {
	next := f.Clone()
	rotated := r.RefreshToken != "" && r.RefreshToken != f.RefreshToken
	if rotated {
		next.RefreshToken = r.RefreshToken
		next.LastRotationAt = r.Now
	}
	next.Generation++
	next.LastRefreshAt = r.Now
	next.LastRefreshRotated = &rotated
	next.InDoubt = false
	next.Unproven = false
	next.Claim = nil
	next.LastError, next.LastErrorAt = "", time.Time{}
	if r.LastError != "" {
		next.LastError, next.LastErrorAt = r.LastError, r.Now
	}
	next.Access = r.Access
	return f.to(EvStoreResult, next)
}

// Revoked returns f revoked for reason: no tokens, no claim (a replica
// holding one then fails its result's check-and-set). A deliberate
// revocation (ReasonAdminRevoked) keeps the refresh token as
// PendingRevocation until the provider confirms.
func (f *Record) Revoked(reason notice.RevocationReason, detail string, now time.Time) (*Record, error) {
	ev := EvRevoke
	next := f.Clone()
	if reason == notice.ReasonAdminRevoked {
		ev, next.PendingRevocation = EvRevokeDeliberately, f.RefreshToken
	}
	next.Status = StatusRevoked
	next.RefreshToken = ""
	next.Access = nil
	next.InDoubt = false
	next.Claim = nil
	next.RevokedReason, next.RevokedAt = reason, now
	next.LastError, next.LastErrorAt = detail, now
	return f.to(ev, next)
}

// ProviderConfirmed returns f without the token the provider confirmed
// revoking.
func (f *Record) ProviderConfirmed() (*Record, error) {
	next := f.Clone()
	next.PendingRevocation = ""
	return f.to(EvConfirmProviderRevocation, next)
}

// NotedPreviousAccess returns f recording what the provider does with the
// previous access token at a rotation.
func (f *Record) NotedPreviousAccess(p credspec.PreviousAccess) (*Record, error) {
	next := f.Clone()
	next.PreviousAccess = p
	return f.to(EvNotePreviousAccess, next)
}

// ReplacedBy returns the new family that replaces f.
func (f *Record) ReplacedBy(next *Record) (*Record, error) {
	return f.to(EvInstall, next)
}

// ReplacedClaimedBy returns next, the new family that replaces f, claimed
// by holder until deadline: an imported token is stored together with the
// claim for the refresh that proves it, so that refresh writes only its
// result. A holder that dies after the install leaves an ordinary claim,
// taken over at its deadline. next is modified.
func (f *Record) ReplacedClaimedBy(next *Record, holder string, deadline time.Time) (*Record, error) {
	next.Claim = &Claim{Holder: holder, Deadline: deadline}
	return f.to(EvInstall, next)
}
