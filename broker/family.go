package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/notice"
	"github.com/rotavault/rotavault/internal/ctxwait"
	"github.com/rotavault/rotavault/store"
)

// A token family's life, in one place: the states a family can be in, the
// events that move it, the table of allowed transitions, the pure methods
// that compute the next record (refusing what the table does not allow),
// and updateFamily, the one writer of family records.
//
// A state is derived from the stored record (familyRecord.state), except
// stateHeld, which lives in this replica's memory (entry.rescue): a rotated
// family the store has not accepted yet. A new state (a serving cutoff
// before a scheduled rotation, an imported token not yet proven by a
// refresh) is a constant here, a case in state(), a line in familyStates and
// rows in familyTransitions; the protocol document's state list and diagram
// are generated from those (TestProtocolDocMatchesTransitionTable).

// familyState names one state of a token family.
type familyState int

const (
	// stateAwaitingReauth: no family was ever installed.
	stateAwaitingReauth familyState = iota
	// stateActive: a family nobody is refreshing and no refresh left in
	// doubt: idle.
	stateActive
	// stateClaimed: a replica holds the refresh claim.
	stateClaimed
	// stateInDoubt: a replica holds the claim, and a refresh of this
	// generation may have rotated the token at the provider without its
	// answer arriving (an unknown outcome, or a takeover from a holder that
	// died or stalled).
	stateInDoubt
	// stateInDoubtReleased: in doubt, the claim given up (the retry was not
	// allowed or failed too): the next refresh claims it in doubt.
	stateInDoubtReleased
	// stateRevoked: the family is dead; only a reauthentication helps.
	stateRevoked
	// stateRevokedPendingProvider: revoked deliberately here, its refresh
	// token kept only to retry the revocation at the provider, which has not
	// confirmed it.
	stateRevokedPendingProvider
	// stateHeld: a rotated family the store did not accept, held in this
	// replica's memory (entry.rescue) and written before anything else; the
	// store still shows the claim.
	stateHeld
	// stateUnproven: an imported refresh token, stored, that no refresh has
	// proven yet (the provider could not be reached); refreshed again by
	// the scheduler and by callers.
	stateUnproven
	// stateCutOff: active, and the clock is past the access token's cutoff
	// at a provider that kills the previous access token (cutoff.go): no
	// replica hands the token out; callers wait for the rotation. Derived
	// from the record and the clock (familyRecord.stateAt), never written.
	stateCutOff
	numFamilyStates
)

// familyStateInfo names and explains a state for the protocol document.
type familyStateInfo struct {
	name, meaning string
}

var familyStates = [numFamilyStates]familyStateInfo{
	stateAwaitingReauth:         {"awaiting_reauthentication", "no family installed yet (`status` awaiting_reauthentication)"},
	stateActive:                 {"active", "idle: `status` active, no `claim`, not `in_doubt`"},
	stateClaimed:                {"claimed", "a replica refreshes: `claim` = {holder, deadline}"},
	stateInDoubt:                {"in_doubt", "`claim` and `in_doubt`: a refresh of this generation may have rotated the token without its answer arriving (an unknown outcome, or a takeover from a holder that died); an invalid_grant now is a lost rotation"},
	stateInDoubtReleased:        {"in_doubt_released", "`in_doubt` without a claim: the holder gave up after an unknown outcome; the next claim stays in doubt"},
	stateRevoked:                {"revoked", "`status` revoked with `revoked_reason`; no tokens kept"},
	stateRevokedPendingProvider: {"revoked_pending_provider", "revoked deliberately, the provider has not confirmed revoking the refresh token: it is kept in `pending_revocation` (never presented to the token endpoint) so RevokeCredential can retry"},
	stateHeld:                   {"held", "in memory only: a rotated family the store did not accept; the store still shows the claim, the older token is never presented again, and the write is retried before any other refresh"},
	stateUnproven:               {"unproven", "`status` active and `unproven`, no claim: an imported refresh token stored but not yet proven by a refresh (`credentials show`: unproven); the proving refresh is retried"},
	stateCutOff:                 {"cut_off", "`status` active, idle, the clock past the access token's cutoff (its scheduled rotation computed from the record, minus min(500 ms, lifetime/40)) at a provider that kills the previous access token: no replica hands the token out, callers wait for the rotation; derived from the record and the clock, never written"},
}

func (s familyState) String() string {
	if s >= 0 && s < numFamilyStates {
		return familyStates[s].name
	}
	return fmt.Sprintf("familyState(%d)", int(s))
}

// familyEvent names what moves a family from one state to another.
type familyEvent int

const (
	// evInstall: Reauthenticate (code, device, import) installs a new family.
	evInstall familyEvent = iota
	// evClaim: this replica claims the refresh (check-and-set, write 1).
	evClaim
	// evTakeOver: another replica's claim passed its deadline; this one
	// claims in its place, in doubt.
	evTakeOver
	// evMarkInDoubt: a refresh's outcome is unknown; recorded before any
	// retry.
	evMarkInDoubt
	// evStoreResult: the provider answered a new token; stored with
	// check-and-set on the claim's version (write 2).
	evStoreResult
	// evRelease: the holder gives up without a result.
	evRelease
	// evHold: the result write failed after the provider rotated.
	evHold
	// evStoreHeld: a held rotation was written.
	evStoreHeld
	// evDropHeld: a held rotation met a newer state in the store, which
	// wins.
	evDropHeld
	// evRevoke: the provider refused the refresh token (invalid_grant), or
	// introspection found it revoked there.
	evRevoke
	// evRevokeDeliberately: RevokeCredential.
	evRevokeDeliberately
	// evConfirmProviderRevocation: the provider confirmed revoking the
	// pending token.
	evConfirmProviderRevocation
	// evTakeOverDead: on an exclusive store (WithExclusiveStore), another
	// holder's claim is a previous process's, which died: this replica
	// claims in its place at once, in doubt.
	evTakeOverDead
	// evReachCutoff: the clock passes the access token's cutoff (no write).
	evReachCutoff
	// evNotePreviousAccess: introspection after a rotation found whether
	// the provider killed the previous access token.
	evNotePreviousAccess
	numFamilyEvents
)

var familyEventNames = [numFamilyEvents]string{
	evInstall:                   "install",
	evClaim:                     "claim",
	evTakeOver:                  "take_over",
	evMarkInDoubt:               "mark_in_doubt",
	evStoreResult:               "store_result",
	evRelease:                   "release",
	evHold:                      "hold",
	evStoreHeld:                 "store_held",
	evDropHeld:                  "drop_held",
	evRevoke:                    "revoke",
	evRevokeDeliberately:        "revoke_deliberately",
	evConfirmProviderRevocation: "confirm_provider_revocation",
	evTakeOverDead:              "take_over_dead",
	evReachCutoff:               "reach_cutoff",
	evNotePreviousAccess:        "note_previous_access",
}

func (e familyEvent) String() string {
	if e >= 0 && e < numFamilyEvents {
		return familyEventNames[e]
	}
	return fmt.Sprintf("familyEvent(%d)", int(e))
}

// transition is one allowed change of state.
type transition struct {
	From  familyState
	Event familyEvent
	To    familyState
	// Why says when it happens, for the protocol document.
	Why string
}

// familyTransitions is every change of state a family may go through;
// anything else is refused (*transitionError). Read-only.
var familyTransitions = []transition{
	{stateAwaitingReauth, evInstall, stateActive, "Reauthenticate"},
	{stateActive, evInstall, stateActive, "Reauthenticate: a new family replaces this one (revoked at the provider for code and device flows)"},
	{stateClaimed, evInstall, stateActive, "Reauthenticate during a refresh: the holder's result write then conflicts"},
	{stateInDoubt, evInstall, stateActive, "Reauthenticate"},
	{stateInDoubtReleased, evInstall, stateActive, "Reauthenticate"},
	{stateRevoked, evInstall, stateActive, "Reauthenticate"},
	{stateRevokedPendingProvider, evInstall, stateActive, "Reauthenticate; the pending token is revoked at the provider (code and device flows)"},
	{stateHeld, evInstall, stateActive, "Reauthenticate: the held rotation is dropped"},

	{stateActive, evClaim, stateClaimed, "a token is needed: CAS claim {holder, now + 45 s} (write 1)"},
	{stateClaimed, evClaim, stateClaimed, "this replica's own earlier claim, not released: claimed again"},
	{stateInDoubt, evClaim, stateInDoubt, "this replica's own earlier claim, in doubt: claimed again"},
	{stateInDoubtReleased, evClaim, stateInDoubt, "the next refresh after an unknown outcome"},
	{stateClaimed, evTakeOver, stateInDoubt, "the holder's deadline passed (it died or stalled, maybe after the provider rotated)"},
	{stateInDoubt, evTakeOver, stateInDoubt, "the holder's deadline passed"},

	{stateClaimed, evMarkInDoubt, stateInDoubt, "answer lost, timeout, 5xx: CAS in_doubt before the one retry"},
	{stateClaimed, evStoreResult, stateActive, "provider OK: CAS result on the claim's version (write 2), generation + 1"},
	{stateInDoubt, evStoreResult, stateActive, "provider OK (the retry, or a grace period): generation + 1, doubt cleared"},
	{stateClaimed, evRelease, stateActive, "not processed, client refused, gave up: CAS release"},
	{stateInDoubt, evRelease, stateInDoubtReleased, "no retry allowed after an unknown outcome: CAS release, doubt kept"},

	{stateClaimed, evHold, stateHeld, "the result write failed after the provider rotated: held in memory, UNAVAILABLE"},
	{stateInDoubt, evHold, stateHeld, "the result write failed after the provider rotated"},
	{stateHeld, evStoreHeld, stateActive, "the held rotation is written (before any other refresh, on every scheduler tick from the next one on, at shutdown)"},
	{stateHeld, evDropHeld, stateActive, "the store moved on (a takeover's rotation after the claim ran out, or the write landed with its answer lost): the store's state wins"},
	{stateHeld, evDropHeld, stateClaimed, "the store moved on and another replica refreshes again: the store's state wins"},
	{stateHeld, evDropHeld, stateInDoubt, "another replica took the claim over and is still refreshing: the store's state wins"},
	{stateHeld, evDropHeld, stateInDoubtReleased, "another replica took the claim over and gave up in doubt: the store's state wins"},
	{stateHeld, evDropHeld, stateRevoked, "the family was revoked meanwhile: the store's state wins"},
	{stateHeld, evDropHeld, stateRevokedPendingProvider, "the family was revoked deliberately meanwhile: the store's state wins"},

	{stateActive, evRevoke, stateRevoked, "introspection: the refresh token is inactive at the provider (REVOKED_AT_PROVIDER)"},
	{stateClaimed, evRevoke, stateRevoked, "invalid_grant without doubt (REFRESH_TOKEN_REJECTED)"},
	{stateInDoubt, evRevoke, stateRevoked, "invalid_grant after an unknown outcome or a takeover (LOST_ROTATION, not theft)"},
	{stateInDoubtReleased, evRevoke, stateRevoked, "invalid_grant met by a holder whose claim another replica took over and released meanwhile"},
	{stateActive, evRevokeDeliberately, stateRevokedPendingProvider, "RevokeCredential (ADMIN_REVOKED): store first, then the provider"},
	{stateClaimed, evRevokeDeliberately, stateRevokedPendingProvider, "RevokeCredential during a refresh: the holder's result write conflicts and finds the family revoked"},
	{stateInDoubt, evRevokeDeliberately, stateRevokedPendingProvider, "RevokeCredential"},
	{stateInDoubtReleased, evRevokeDeliberately, stateRevokedPendingProvider, "RevokeCredential"},
	{stateRevokedPendingProvider, evConfirmProviderRevocation, stateRevoked, "the provider confirmed (now, or when RevokeCredential is called again)"},

	{stateClaimed, evTakeOverDead, stateInDoubt, "embedded store: the file lock proves the holder (a previous process) dead, so its claim is taken over at once after a restart"},
	{stateInDoubt, evTakeOverDead, stateInDoubt, "embedded store: the holder was a previous process"},

	{stateAwaitingReauth, evInstall, stateUnproven, "reauth import: the token is stored, then a refresh proves it"},
	{stateActive, evInstall, stateUnproven, "reauth import"},
	{stateClaimed, evInstall, stateUnproven, "reauth import during a refresh"},
	{stateInDoubt, evInstall, stateUnproven, "reauth import"},
	{stateInDoubtReleased, evInstall, stateUnproven, "reauth import"},
	{stateRevoked, evInstall, stateUnproven, "reauth import"},
	{stateRevokedPendingProvider, evInstall, stateUnproven, "reauth import"},
	{stateHeld, evInstall, stateUnproven, "reauth import: the held rotation is dropped"},
	{stateUnproven, evInstall, stateUnproven, "reauth import again"},
	{stateUnproven, evInstall, stateActive, "Reauthenticate with a code or device flow"},
	{stateUnproven, evClaim, stateClaimed, "the proving refresh (import, a caller, the scheduler's retry)"},
	{stateClaimed, evRelease, stateUnproven, "the proving refresh could not reach the provider: stored, not yet proven; retried"},
	{stateUnproven, evRevokeDeliberately, stateRevokedPendingProvider, "RevokeCredential"},
	{stateActive, evReachCutoff, stateCutOff, "the clock passes the cutoff every replica computes from the record alike (no write); a provider that keeps the previous access token has none"},
	{stateCutOff, evClaim, stateClaimed, "a caller past the cutoff, or the scheduler, claims the rotation; callers on every replica wait for its result"},
	{stateCutOff, evInstall, stateActive, "Reauthenticate with a code or device flow"},
	{stateCutOff, evInstall, stateUnproven, "reauth import"},
	{stateCutOff, evRevoke, stateRevoked, "introspection: the refresh token is inactive at the provider (REVOKED_AT_PROVIDER)"},
	{stateCutOff, evRevokeDeliberately, stateRevokedPendingProvider, "RevokeCredential"},
	{stateActive, evNotePreviousAccess, stateActive, "generic provider with an introspection endpoint, previous_access_token unset: the access token a rotation replaced was introspected; whether it died is recorded (not once the new token is past its cutoff), and replicas apply or drop the cutoff alike"},
}

// allowed reports whether the table has from --event--> to.
func allowed(from familyState, ev familyEvent, to familyState) bool {
	for _, t := range familyTransitions {
		if t.From == from && t.Event == ev && t.To == to {
			return true
		}
	}
	return false
}

// transitionError is a change of state the table does not allow.
type transitionError struct {
	From  familyState
	Event familyEvent
	To    familyState
	// Why, when set, is a precondition of the event that failed.
	Why string
}

func (e *transitionError) Error() string {
	if e.Why != "" {
		return fmt.Sprintf("broker: family transition %s on %s refused: %s", e.Event, e.From, e.Why)
	}
	return fmt.Sprintf("broker: family transition %s --%s--> %s not allowed", e.From, e.Event, e.To)
}

// state is the record's state as stored.
func (f *familyRecord) state() familyState {
	switch f.Status {
	case StatusActive:
		switch {
		case f.Claim != nil && f.InDoubt:
			return stateInDoubt
		case f.Claim != nil:
			return stateClaimed
		case f.InDoubt:
			return stateInDoubtReleased
		case f.Unproven:
			return stateUnproven
		}
		return stateActive
	case StatusRevoked:
		if f.PendingRevocation != "" {
			return stateRevokedPendingProvider
		}
		return stateRevoked
	}
	return stateAwaitingReauth
}

// stateAt is the record's state at now, for a token whose cutoff is
// cutoff (zero: none): stateCutOff once an idle family's token passed it.
func (f *familyRecord) stateAt(cutoff, now time.Time) familyState {
	s := f.state()
	if s == stateActive && !cutoff.IsZero() && !now.Before(cutoff) {
		return stateCutOff
	}
	return s
}

// familyStateOf is the state of an entry's family: the stored one, or
// stateHeld while a rotation waits in memory.
func familyStateOf(fam *familyRecord, held bool) familyState {
	if held {
		return stateHeld
	}
	return fam.state()
}

// idle reports whether nothing is happening to the family: active, no claim
// (live or expired: a holder that stopped may have rotated the token at the
// provider already) and no doubt. Only an idle family's refresh token is
// known to be the provider's current one.
func (f *familyRecord) idle() bool { return f.state() == stateActive }

// to returns next if the table allows f --ev--> next. A family past its
// cutoff is active in its record: the table allows every stored event from
// cut_off that it allows from active.
func (f *familyRecord) to(ev familyEvent, next *familyRecord) (*familyRecord, error) {
	if from, to := f.state(), next.state(); !allowed(from, ev, to) {
		return nil, &transitionError{From: from, Event: ev, To: to}
	}
	return next, nil
}

// claimedBy returns f claimed by holder until deadline: a claim of its own,
// or a takeover (in doubt) of another holder's claim whose deadline passed
// by now.
func (f *familyRecord) claimedBy(holder string, deadline, now time.Time) (*familyRecord, error) {
	next := f.clone()
	ev := evClaim
	if c := f.Claim; c != nil && c.Holder != holder {
		if now.Before(c.Deadline) {
			return nil, &transitionError{From: f.state(), Event: evTakeOver, To: stateInDoubt, Why: "the holder's claim has not expired"}
		}
		// The holder may have presented the token already: an invalid_grant
		// now is a lost rotation, not theft.
		ev, next.InDoubt = evTakeOver, true
	}
	next.Claim = &claim{Holder: holder, Deadline: deadline}
	return f.to(ev, next)
}

// takenOverFromDead returns f claimed by holder until deadline, in doubt,
// whatever the deadline of the other holder's claim: on an exclusive store
// that holder was a previous process, and it died (it may have presented
// the token first).
func (f *familyRecord) takenOverFromDead(holder string, deadline time.Time) (*familyRecord, error) {
	if c := f.Claim; c == nil || c.Holder == holder {
		return nil, &transitionError{From: f.state(), Event: evTakeOverDead, To: stateInDoubt, Why: "no other holder's claim"}
	}
	next := f.clone()
	next.InDoubt = true
	next.Claim = &claim{Holder: holder, Deadline: deadline}
	return f.to(evTakeOverDead, next)
}

// markedInDoubt returns f with its refresh in doubt.
func (f *familyRecord) markedInDoubt() (*familyRecord, error) {
	next := f.clone()
	next.InDoubt = true
	return f.to(evMarkInDoubt, next)
}

// released returns f without holder's claim; a doubt stays.
func (f *familyRecord) released(holder string) (*familyRecord, error) {
	if f.Claim == nil || f.Claim.Holder != holder {
		return nil, &transitionError{From: f.state(), Event: evRelease, To: f.state(), Why: "not the holder's claim"}
	}
	next := f.clone()
	next.Claim = nil
	return f.to(evRelease, next)
}

// refreshResult is what a successful refresh brings to the record.
type refreshResult struct {
	now time.Time
	// refreshToken is the provider's new refresh token; "" when it did not
	// rotate (a legacy app keeps its token).
	refreshToken string
	access       *accessToken
	// lastError flags the credential (a response signature mismatch).
	lastError string
}

// rotated returns f after a successful refresh: generation + 1, no claim,
// no doubt.
func (f *familyRecord) rotated(r refreshResult) (*familyRecord, error) {
	next := f.clone()
	rotated := r.refreshToken != "" && r.refreshToken != f.RefreshToken
	if rotated {
		next.RefreshToken = r.refreshToken
		next.LastRotationAt = r.now
	}
	next.Generation++
	next.LastRefreshAt = r.now
	next.LastRefreshRotated = &rotated
	next.InDoubt = false
	next.Unproven = false
	next.Claim = nil
	next.LastError, next.LastErrorAt = "", time.Time{}
	if r.lastError != "" {
		next.LastError, next.LastErrorAt = r.lastError, r.now
	}
	next.Access = r.access
	return f.to(evStoreResult, next)
}

// revoked returns f revoked for reason: no tokens, no claim (a replica
// holding one then fails its result's check-and-set). A deliberate
// revocation (ReasonAdminRevoked) keeps the refresh token as
// PendingRevocation until the provider confirms.
func (f *familyRecord) revoked(reason notice.RevocationReason, detail string, now time.Time) (*familyRecord, error) {
	ev := evRevoke
	next := f.clone()
	if reason == notice.ReasonAdminRevoked {
		ev, next.PendingRevocation = evRevokeDeliberately, f.RefreshToken
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

// providerConfirmed returns f without the token the provider confirmed
// revoking.
func (f *familyRecord) providerConfirmed() (*familyRecord, error) {
	next := f.clone()
	next.PendingRevocation = ""
	return f.to(evConfirmProviderRevocation, next)
}

// notedPreviousAccess returns f recording what the provider does with the
// previous access token at a rotation.
func (f *familyRecord) notedPreviousAccess(p credspec.PreviousAccess) (*familyRecord, error) {
	next := f.clone()
	next.PreviousAccess = p
	return f.to(evNotePreviousAccess, next)
}

// replacedBy returns the new family that replaces f.
func (f *familyRecord) replacedBy(next *familyRecord) (*familyRecord, error) {
	return f.to(evInstall, next)
}

// familyWriteTries bounds the check-and-set rounds of one updateFamily
// call: each conflict means another writer made progress.
const familyWriteTries = 8

// errFamilyNotWritten marks the store error of a family write (as opposed
// to a read): the caller may hold what it meant to write.
var errFamilyNotWritten = errors.New("broker: family record not written")

// updateFamily is the only writer of family records. mutate sees the
// family as stored and returns the record to write, or nil to write nothing
// (the current state is the result: another replica's work is adopted,
// not repeated), or an error that ends the update. The write is a
// check-and-set on the version mutate saw; on a conflict the record is
// re-read and mutate decides again, at most familyWriteTries times.
//
// base, when set, is the state to decide on first without reading: the
// version the caller last saw or wrote (a claim's fence), so the common
// path costs one write and no read. Every state read or written becomes
// the entry's cached view.
//
// It returns the view written or adopted; with mutate's error, the view it
// decided on. Errors: mutate's, ErrConflict (still changing after
// familyWriteTries), ErrNotFound, *UnavailableError (a write error wraps
// errFamilyNotWritten).
func (b *Broker) updateFamily(ctx context.Context, e *entry, base *view, mutate func(cur *view) (*familyRecord, error)) (*view, error) {
	cur := base
	for range familyWriteTries {
		if cur == nil {
			var err error
			if cur, err = b.readEntry(ctx, e); err != nil {
				return nil, err
			}
		}
		next, err := mutate(cur)
		if err != nil {
			return cur, err
		}
		if next == nil {
			return cur, nil
		}
		version, err := b.putFamily(ctx, familyKey(cur.cred), next, cur.famVersion)
		if errors.Is(err, store.ErrConflict) {
			cur = nil
			continue
		}
		if err != nil {
			return nil, storeUnavailable(fmt.Errorf("%w: %w", errFamilyNotWritten, err))
		}
		v := b.newView(cur.cred, cur.credVersion, next, version)
		e.setView(v)
		return v, nil
	}
	return nil, fmt.Errorf("%w: the token family of %s kept changing", brokererr.ErrConflict, e.id)
}

// readEntry reads the entry's credential and family from the store and
// caches them.
func (b *Broker) readEntry(ctx context.Context, e *entry) (*view, error) {
	now := b.opts.Now()
	v, err := b.readView(ctx, e.id)
	if err != nil {
		return nil, err
	}
	e.credReadAt.Store(now.UnixNano())
	e.setView(v)
	return v, nil
}

// putFamily stores a family record with check-and-set on expected,
// retrying transient store errors. ErrConflict is returned at once. Only
// updateFamily calls it.
func (b *Broker) putFamily(ctx context.Context, key string, fam *familyRecord, expected uint64) (uint64, error) {
	fam.Format = recordFormat
	raw, err := encodeRecord(fam)
	if err != nil {
		return 0, err
	}
	for attempt := 0; ; attempt++ {
		version, err := b.store.Put(ctx, key, raw, expected)
		if errors.Is(err, store.ErrConflict) {
			// An earlier attempt may have been stored with its answer lost
			// (a timeout talking to Vault): then the record holds exactly
			// our bytes, and this is success, not a lost race.
			if rec, gerr := b.store.Get(ctx, key); gerr == nil && rec.Version == expected+1 && bytes.Equal(rec.Value, raw) {
				return rec.Version, nil
			}
		}
		if err == nil || errors.Is(err, store.ErrConflict) || attempt+1 >= storeWriteTries {
			return version, err
		}
		b.log.WarnContext(ctx, "store write failed; retrying", "key", key, "attempt", attempt+1, "err", err)
		if err := ctxwait.Sleep(ctx, b.backoff(attempt, 0)); err != nil {
			return 0, err
		}
	}
}
