package broker

import (
	"context"
	"fmt"
	"time"

	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/detect"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/notice"
)

// GetAccessToken returns an access token with at least req.MinRemaining
// left. Concurrent callers share one refresh. Errors: *InvalidArgumentError,
// ErrNotFound, ErrReauthRequired, *UnavailableError, *RateLimitedError,
// ErrClosed.
func (b *Broker) GetAccessToken(ctx context.Context, req access.Request) (access.Token, error) {
	if err := credspec.ValidateID(req.CredentialID); err != nil {
		return access.Token{}, err
	}
	if req.MinRemaining < 0 {
		return access.Token{}, brokererr.Invalid("min_remaining_lifetime", "must not be negative")
	}
	if r := req.Rejected; r != nil && r.Fingerprint != "" && !access.IsFingerprint(r.Fingerprint) {
		return access.Token{}, brokererr.Invalid("rejected_token.fingerprint", "must be 16 lowercase hex digits")
	}
	e, err := b.entry(ctx, req.CredentialID)
	if err != nil {
		return access.Token{}, err
	}
	v := e.view.Load()
	if err := b.opts.RefuseShortGrace(v.cred.Spec); err != nil {
		return access.Token{}, err
	}
	if v.fam.Status != family.StatusActive {
		v = b.recheckInactive(ctx, e, v)
	}
	t, now := b.timing(v), b.opts.Now()
	if err := t.CheckMinRemaining(req.MinRemaining); err != nil {
		return access.Token{}, err
	}
	if req.Rejected == nil && t.Fresh(req.MinRemaining, now) && !e.beingRotated(v) {
		e.markUsed()
		b.metrics.CacheHits.Add(1)
		return t.Token(now), nil // the hot path: no allocation, no store
	}
	b.metrics.CacheMisses.Add(1)
	need := b.needsRefresh(e, req.MinRemaining)
	if req.Rejected == nil {
		if floor, held := t.HoldsBack(now); held && !e.beingRotated(v) {
			return b.serveHeldBack(e, v, floor)
		}
		if b.cutOff(e, v, req.MinRemaining) {
			// The token is unexpired, but a replica may rotate it from its
			// scheduled time on: wait for the rotation rather than hand out
			// a token it may kill.
			b.metrics.CutoffWaits.Add(1)
			if err := b.awaitScheduledRotation(ctx, e, v); err != nil {
				return access.Token{}, err
			}
		}
	}

	reported := v // what a rejected-token report is judged against
	if req.Rejected != nil {
		if v, done, err := b.handleRejection(ctx, e, v, req); done || err != nil {
			if err != nil {
				return access.Token{}, err
			}
			e.markUsed()
			tok := b.timing(v).Token(b.opts.Now())
			tok.Rejected = family.RejectionOutcome(req.Rejected, reported.fam, v.fam)
			return tok, nil
		}
		// The named token is current and dead at the provider: refresh even
		// though it looks unexpired.
		stale := v.fam.Generation
		need = func(v *view) bool {
			return v.fam.Generation == stale || !b.timing(v).Fresh(req.MinRemaining, b.opts.Now()) || e.beingRotated(v)
		}
	}

	v, err = b.refresh(ctx, e, nil, need)
	if err != nil {
		return access.Token{}, err
	}
	if !b.timing(v).Fresh(req.MinRemaining, b.opts.Now()) {
		// Another caller's refresh (or another replica's) just ran: this
		// one may not spend a rotation of its own. (A rejection that named
		// the current token refreshed it, so its answer is fresh.)
		if floor, held := b.timing(v).HoldsBack(b.opts.Now()); held {
			tok, err := b.serveHeldBack(e, v, floor)
			tok.Rejected = family.RejectionOutcome(req.Rejected, reported.fam, v.fam)
			return tok, err
		}
	}
	e.markUsed()
	tok := b.timing(v).Token(b.opts.Now())
	tok.Rejected = family.RejectionOutcome(req.Rejected, reported.fam, v.fam)
	return tok, nil
}

// inactiveRecheck bounds the store reads of callers hammering a credential
// without a usable family.
const inactiveRecheck = time.Second

// recheckInactive re-reads a family this replica knows as revoked or never
// installed: another replica may have installed a new one (Reauthenticate
// there), and nothing else tells this one.
func (b *Broker) recheckInactive(ctx context.Context, e *entry, v *view) *view {
	now := b.opts.Now()
	last := e.inactiveReadAt.Load()
	if now.Sub(time.Unix(0, last)) < inactiveRecheck || !e.inactiveReadAt.CompareAndSwap(last, now.UnixNano()) {
		return v
	}
	cur, err := b.readView(ctx, e.id)
	if err != nil {
		return v
	}
	e.setView(cur)
	return e.view.Load()
}

// needsRefresh returns the test a view fails when its token cannot serve a
// caller wanting minRemaining and the rotation floor lets it be refreshed
// (see pacing.RotationInterval), or when this replica is rotating it.
func (b *Broker) needsRefresh(e *entry, minRemaining time.Duration) func(*view) bool {
	return func(v *view) bool {
		if e.beingRotated(v) {
			return true
		}
		t, now := b.timing(v), b.opts.Now()
		if t.Fresh(minRemaining, now) {
			return false
		}
		_, held := t.HoldsBack(now)
		return !held
	}
}

// markUsed records that the entry's token is in use; it reads first, so
// concurrent callers do not all write the same cache line.
func (e *entry) markUsed() {
	if !e.used.Load() && !e.used.Swap(true) {
		e.wake() // a first use may make it due: the hot path only reads
	}
}

// handleRejection decides what a rejected-token report leads to. done means
// the returned view answers the caller without a refresh.
func (b *Broker) handleRejection(ctx context.Context, e *entry, v *view, req access.Request) (*view, bool, error) {
	if v.fam.Status != family.StatusActive || v.fam.Access == nil {
		return v, false, nil
	}
	if !v.fam.Names(req.Rejected) {
		// An older token was rejected; the current one is another token. Hand
		// it out if it suits, else refresh as usual.
		return v, b.timing(v).Fresh(req.MinRemaining, b.opts.Now()), nil
	}
	// Paced (pacing.Rejections), unless a refresh runs already.
	e.mu.Lock()
	now := b.opts.Now()
	if wait := e.rejections.Wait(now, b.opts.Refresh.RejectionInterval); wait > 0 && e.flight == nil {
		e.mu.Unlock()
		return nil, false, &brokererr.RateLimitedError{RetryAfter: wait}
	}
	e.rejections.Probed(now)
	e.mu.Unlock()
	refreshing := func(v *view) (*view, bool, error) {
		e.mu.Lock()
		e.rejections.Refreshed(b.opts.Now())
		e.mu.Unlock()
		return v, false, nil
	}

	// Before spending a rotation, ask the provider (package detect): the
	// token may still be active, or the whole family revoked there.
	switch b.asker().Rejected(ctx, detectFamily(e, v)) {
	case detect.RejectionActive:
		return v, true, nil
	case detect.RejectionRevoked:
		revoked, err := b.confirmRevokedAtProvider(ctx, e, v, "a rejected-token report")
		if err != nil {
			return nil, false, err
		}
		if revoked {
			return nil, false, family.ReauthRequired(e.id, &family.Record{Status: family.StatusRevoked, RevokedReason: notice.ReasonRevokedAtProvider})
		}
		// The family moved on (another refresh rotated the token): the
		// refresh below adopts or continues it.
		return refreshing(e.view.Load())
	}
	return refreshing(v)
}

// refresh makes sure a view passing need exists, running at most one refresh
// per credential at a time and sharing its result with every waiter. The
// refresh runs under the broker's context, not the caller's: a caller that
// gives up must not abandon a rotation half-way. need is called with e.mu
// held: it must not take it.
// A caller holding the claim already (l: an import's install) refreshes
// under it in a flight of its own while the family is as l left it.
func (b *Broker) refresh(ctx context.Context, e *entry, l *claimLease, need func(*view) bool) (*view, error) {
	for {
		f, own, err := b.joinOrStart(ctx, e, l, need)
		if err != nil {
			return nil, err
		}
		if f == nil {
			return e.view.Load(), nil
		}
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("broker: waiting for refresh: %w", ctx.Err())
		}
		if !own && l != nil && (f.err != nil || need(e.view.Load())) {
			continue // a flight begun before l's install: it may answer for the old family
		}
		if f.err != nil {
			return nil, f.err
		}
		if f.v.fam.Status != family.StatusActive {
			// A flight started for another need (the scheduler's) may end on
			// a family revoked meanwhile: no token to hand out.
			return nil, family.ReauthRequired(e.id, f.v.fam)
		}
		// A joined flight served another caller's need (it may have adopted
		// a token with less life left than this caller wants): go again, now
		// with a flight of its own. The result of its own flight is final,
		// met or not, so a need no fresh token meets costs one rotation, not
		// a rotation per loop.
		if !own && need(f.v) && f.v.fam.Status == family.StatusActive {
			continue
		}
		return f.v, nil
	}
}

// joinOrStart returns the credential's flight, starting one for need when
// none runs (own reports that). A nil flight means there is nothing to wait
// for: the current view passes need when err is nil. Of caller, a flight
// started uses only the span (its rotavault.refresh span's parent).
func (b *Broker) joinOrStart(caller context.Context, e *entry, l *claimLease, need func(*view) bool) (f *flight, own bool, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	v := e.view.Load()
	if !need(v) {
		return nil, false, nil
	}
	if v.fam.Status != family.StatusActive && e.rescue.Load() == nil {
		return nil, false, family.ReauthRequired(e.id, v.fam)
	}
	if e.flight != nil {
		return e.flight, false, nil
	}
	f = &flight{done: make(chan struct{})}
	started := b.goTracked(func() {
		v, err := b.runRefresh(caller, e, l, need)
		e.mu.Lock()
		f.v, f.err = v, err
		e.flight = nil
		e.mu.Unlock()
		close(f.done)
	})
	if !started {
		return nil, false, brokererr.ErrClosed
	}
	e.flight = f
	return f, true, nil
}
