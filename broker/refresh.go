package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/registry"
	"github.com/rotavault/rotavault/broker/spans"
	"github.com/rotavault/rotavault/internal/ctxwait"
	"github.com/rotavault/rotavault/provider"
)

// Store writes after a successful rotation are retried this many times
// before the rotated family is held in memory (see entry.rescue).
const storeWriteTries = 5

// persistTimeout bounds the store writes that record what the provider
// already did. They run on a context of their own: neither the refresh's
// deadline nor a shutdown may cut off the write of a rotated token.
const persistTimeout = 30 * time.Second

func persistContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), persistTimeout)
}

// runRefresh is the body of a flight: the only place that presents a
// credential's refresh token to the provider. It runs under the broker's
// context; caller lends only its span, the rotavault.refresh span's parent.
// A claim held already (l, non-nil) serves the first try.
func (b *Broker) runRefresh(caller context.Context, e *entry, l *claimLease, need func(*view) bool) (v *view, err error) {
	ctx, cancel := context.WithTimeout(b.ctx, b.opts.Refresh.Timeout)
	defer cancel()
	ctx, span := spans.Start(ctx, caller, spans.Refresh, e.id)
	defer func() { spans.End(span, v.generation(), "ok", err) }()

	// A rotated family that could not be stored is the truth: store it
	// before anything else, and never present the older token it replaced.
	if v, err := b.storeRescue(ctx, e); err != nil || (v != nil && !need(v)) {
		return v, err
	}
	if err := b.opts.RefuseShortGrace(e.view.Load().cred.Spec); err != nil {
		if l != nil {
			l.release(ctx)
		}
		return nil, err
	}

	// Claim the refresh across replicas, or adopt another replica's result.
	// A claim lost to a takeover (this replica paused past its deadline) is
	// not the callers' problem: the replica that took over may have stored
	// a fresh token already, so decide once more on what the store holds
	// (adopt it, wait for the other's refresh, or claim anew) rather than
	// answer ABORTED.
	for try := 0; try < 2; try++ {
		if l, v, err = b.acquire(ctx, e, need, l); err != nil || l == nil {
			return v, err
		}
		v, err = b.refreshFamily(ctx, l)
		if l = nil; !errors.Is(err, errFenceMoved) {
			break
		}
		b.log.WarnContext(ctx, "another replica took this replica's refresh claim over; reading what it stored", "credential", e.id)
	}
	b.metrics.CountRefresh(err)
	e.mu.Lock()
	e.lastErr = err
	e.mu.Unlock()
	return v, err
}

// refreshFamily presents the family's refresh token under the lease and
// acts on each answer as family.Decide says.
func (b *Broker) refreshFamily(ctx context.Context, l *claimLease) (*view, error) {
	// Provider calls end well before this replica's claim does.
	pctx, cancel := b.providerContext(ctx, l.v.fam)
	defer cancel()
	a := family.Attempt{NotProcessedTries: b.opts.Refresh.NotProcessedTries}
	// From the first presentation on, this replica's callers stop getting
	// the access token the rotation may kill.
	defer l.e.presentingAt(l.v)()
	for ; ; a.N++ {
		spec := l.v.cred.Spec
		sent := b.opts.Now()
		tok, answer := b.provider.Refresh(pctx, spec.Endpoint(), spec.ClientCredentials(), l.v.fam.RefreshToken)
		tok.Restamp(sent)
		a.State, a.Grace, a.Now = l.v.fam.State(), spec.ReuseGrace, b.opts.Now()
		d := family.Decide(a, answer)
		if d.Outcome == family.OutcomeUnknown {
			if a.UnknownSince.IsZero() {
				a.UnknownSince = a.Now
			}
			b.log.WarnContext(ctx, "refresh outcome unknown; the provider may have rotated",
				"credential", l.e.id, "family", l.v.fam.FamilyID, "generation", l.v.fam.Generation, "retrying", d.Action == family.ActionRetry, "err", answer)
		}
		if d.MarkInDoubt {
			if err := l.markInDoubt(ctx); err != nil {
				return nil, err
			}
		}
		switch d.Action {
		case family.ActionStore:
			return l.storeResult(ctx, tok)
		case family.ActionRevoke:
			b.log.WarnContext(ctx, "provider refused the refresh token; revoking the family",
				"credential", l.e.id, "family", l.v.fam.FamilyID, "generation", l.v.fam.Generation, "reason", d.Reason, "provider_error", answer)
			return nil, l.revoke(ctx, d.Reason, family.ProviderDetail(answer))
		case family.ActionRecheckClient:
			a.ClientRechecked = true
			if cred, version, err := registry.ReadCredential(ctx, b.store, l.e.id); err == nil && version != l.v.credVersion {
				l.v = b.newView(cred, version, l.v.fam, l.v.famVersion)
				continue
			}
		case family.ActionRetry:
			if err := ctxwait.Sleep(pctx, b.opts.Refresh.Backoff(a.N, d.BackoffAtLeast)); err != nil {
				d.Err = &brokererr.UnavailableError{Component: brokererr.ComponentProvider, RetryAfter: time.Second, Err: answer}
				break
			}
			continue
		}
		// Giving up with nothing to store: release the claim so other
		// replicas need not wait for its deadline.
		if d.Outcome == family.OutcomeClientRejected {
			var pe *provider.Error
			errors.As(answer, &pe)
			b.log.WarnContext(ctx, "provider refused the client; keeping the family", "credential", l.e.id, "provider_error", pe.Summary(),
				"client_auth_method", pe.ClientAuth.String(), "provider_description", strconv.Quote(pe.Description))
		}
		l.release(ctx)
		return nil, d.Err
	}
}

// storeResult stores the outcome of a successful refresh with
// check-and-set on the lease's fence: persist first, answer later.
func (l *claimLease) storeResult(ctx context.Context, tok *provider.Token) (*view, error) {
	b, e, claimed := l.b, l.e, l.v
	now := b.opts.Now()
	mismatch := tok.SignatureStatus == provider.SignatureMismatch
	next, err := claimed.fam.Rotated(family.ResultOf(claimed.cred.Spec, claimed.fam.Access, tok, now))
	if err != nil {
		return nil, err
	}
	rotated := *next.LastRefreshRotated

	ctx, cancel := persistContext(ctx)
	defer cancel()
	discard := false
	v, err := b.updateFamily(ctx, e, claimed, func(cur *view) (*family.Record, error) {
		if cur == claimed {
			return next, nil
		}
		var err error
		discard, err = b.resultConflict(ctx, e, cur, claimed.fam, next)
		return nil, err
	})
	if discard {
		b.revokeDiscarded(ctx, e, claimed.cred, tok, rotated)
	}
	if errors.Is(err, errFamilyNotWritten) {
		e.rescue.Store(&rescued{base: claimed, fam: next})
		e.wake()
		b.log.ErrorContext(ctx, "rotated refresh token NOT stored yet: holding it in memory and retrying; do not restart this server until the store recovers",
			"credential", e.id, "family", next.FamilyID, "generation", next.Generation, "err", err)
		b.audit(ctx, audit.Event{Action: audit.ActionRescuedToken, Credential: e.id, Family: next.FamilyID, Generation: next.Generation, Detail: "store write failed; retrying"})
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	if v.fam != next {
		return v, nil // our write had landed, its answer lost: adopted
	}
	e.used.Store(false)
	b.announceOffSchedule(e, claimed, v)
	b.detectPreviousAccess(e, claimed, v)

	action := audit.ActionRefreshed
	if rotated {
		action = audit.ActionRotated
	}
	b.audit(ctx, audit.Event{Action: action, Credential: e.id, Family: next.FamilyID, Generation: next.Generation})
	b.log.InfoContext(ctx, "refreshed", "credential", e.id, "family", next.FamilyID, "generation", next.Generation, "rotated", rotated)
	if mismatch {
		b.log.WarnContext(ctx, "response signature mismatch after refresh; new token stored, credential flagged", "credential", e.id, "generation", next.Generation)
		b.audit(ctx, audit.Event{Action: audit.ActionSignatureMismatch, Credential: e.id, Family: next.FamilyID, Generation: next.Generation})
	}
	return v, nil
}

// resultConflict decides on a result write that met another version, from
// the state the store holds now (cur). Three cases: our write landed and
// only its answer was lost (a client-side retry replayed it) — adopt it;
// the same family moved on without us (our claim was taken over) — never
// revoke anything of a live family, since at Salesforce revoking any of its
// refresh tokens kills it; the family was revoked, or another family
// replaced ours — our new token is an orphan: discard reports that it must
// be revoked at the provider.
func (b *Broker) resultConflict(ctx context.Context, e *entry, cur *view, fam, next *family.Record) (discard bool, err error) {
	if cur.fam.FamilyID == next.FamilyID {
		if cur.fam.Status == family.StatusActive && cur.fam.RefreshToken == next.RefreshToken && cur.fam.Generation >= next.Generation {
			return false, nil
		}
		if cur.fam.Status == family.StatusRevoked {
			// The family was revoked (deliberately, on any replica) while we
			// held the claim: the revocation wins. The token we just obtained
			// must not outlive it at a provider that revokes single tokens.
			b.log.WarnContext(ctx, "the family was revoked during a refresh; discarding the refreshed tokens",
				"credential", e.id, "family", fam.FamilyID, "generation", fam.Generation)
			return true, family.ReauthRequired(e.id, cur.fam)
		}
		b.log.ErrorContext(ctx, "refresh result lost a check-and-set race within the same family (our claim was taken over); keeping the stored state",
			"credential", e.id, "family", fam.FamilyID, "generation", fam.Generation)
		return false, fmt.Errorf("%w: another replica took over the refresh of %s: %w", brokererr.ErrConflict, e.id, errFenceMoved)
	}
	// Another family replaced ours while the refresh ran (a reauthentication
	// or a deletion won): the new refresh token belongs to a family nobody
	// uses; revoke it at the provider rather than leave it alive.
	b.log.WarnContext(ctx, "the family changed while refreshing; discarding the refreshed tokens",
		"credential", e.id, "family", fam.FamilyID, "generation", fam.Generation)
	return true, fmt.Errorf("%w: the token family of %s changed during a refresh", brokererr.ErrConflict, e.id)
}

// revokeDiscarded revokes, best effort, a refresh token a refresh obtained
// (rotated) but could not store.
func (b *Broker) revokeDiscarded(ctx context.Context, e *entry, cred *family.Credential, tok *provider.Token, rotated bool) {
	if !rotated {
		return
	}
	if err := b.provider.Revoke(ctx, cred.Spec.Endpoint(), cred.Spec.ClientCredentials(), tok.RefreshToken); err != nil {
		b.log.WarnContext(ctx, "could not revoke the discarded refresh token", "credential", e.id, "err", err)
	}
}

// rescued is a rotated family the store has not accepted yet (family.StateHeld):
// fam, to be written with check-and-set on base, the claim it came from.
type rescued struct {
	base *view
	fam  *family.Record
}

// storeRescue writes a held rotated family, if any. It returns the view the
// store holds afterwards (the held family, or what replaced it), nil when
// there was nothing to store.
func (b *Broker) storeRescue(ctx context.Context, e *entry) (*view, error) {
	r := e.rescue.Load()
	if r == nil {
		return nil, nil
	}
	v, err := b.updateFamily(ctx, e, r.base, func(cur *view) (*family.Record, error) {
		if cur == r.base {
			return r.fam, nil
		}
		b.dropHeld(ctx, e, r, cur)
		return nil, nil
	})
	if err != nil {
		return nil, err
	}
	if e.rescue.CompareAndSwap(r, nil) {
		b.log.InfoContext(ctx, "held rotated refresh token is now stored", "credential", e.id, "generation", r.fam.Generation)
	}
	return v, nil
}

// dropHeld forgets a held rotation whose base version moved: the store may
// already hold it (a write that succeeded with its answer lost), or a newer
// state replaced it. In every case the store's state is the truth from now
// on.
func (b *Broker) dropHeld(ctx context.Context, e *entry, r *rescued, cur *view) {
	e.rescue.CompareAndSwap(r, nil)
	switch {
	case cur.fam.FamilyID == r.fam.FamilyID && cur.fam.RefreshToken == r.fam.RefreshToken:
		b.log.InfoContext(ctx, "held rotated refresh token was already stored", "credential", e.id)
	case cur.fam.FamilyID != r.fam.FamilyID:
		b.log.WarnContext(ctx, "dropping a held rotation of a family that was replaced", "credential", e.id, "family", r.fam.FamilyID)
	default:
		// A later writer of the same family won (a takeover after our claim
		// ran out, or a revocation): the held token is history.
		b.log.WarnContext(ctx, "dropping a held rotation superseded in the store", "credential", e.id, "family", r.fam.FamilyID, "generation", r.fam.Generation)
	}
}

// setView installs v unless the entry already holds a newer stored state.
func (e *entry) setView(v *view) {
	for {
		cur := e.view.Load()
		next := v
		if cur != nil && cur.cred.Incarnation != v.cred.Incarnation {
			// The credential was deleted and created again: versions restarted,
			// so only creation times tell which view is current.
			if !v.cred.CreatedAt.After(cur.cred.CreatedAt) {
				return
			}
		} else if cur != nil && (v.famVersion < cur.famVersion || v.credVersion < cur.credVersion) {
			if v.famVersion <= cur.famVersion && v.credVersion <= cur.credVersion {
				return // nothing newer in v
			}
			// One part is newer, the other older (a refresh racing a
			// credential update): keep the newest of each.
			merged := *v
			if cur.credVersion > v.credVersion {
				merged.cred, merged.credVersion = cur.cred, cur.credVersion
			}
			if cur.famVersion > v.famVersion {
				merged.fam, merged.famVersion = cur.fam, cur.famVersion
			}
			next = &merged
		}
		if e.view.CompareAndSwap(cur, next) {
			e.wake()
			return
		}
	}
}

// dropAccess stops handing out the cached access token.
func (e *entry) dropAccess() {
	for {
		cur := e.view.Load()
		if cur.fam.Access == nil {
			return
		}
		v := *cur
		v.fam = cur.fam.Clone()
		v.fam.Access = nil
		if e.view.CompareAndSwap(cur, &v) {
			return
		}
	}
}
