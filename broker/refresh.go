package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/internal/ctxwait"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store"
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
// credential's refresh token to the provider.
func (b *Broker) runRefresh(e *entry, need func(*view) bool) (*view, error) {
	ctx, cancel := context.WithTimeout(b.ctx, b.opts.refreshTimeout)
	defer cancel()

	// A rotated family that could not be stored is the truth: store it
	// before anything else, and never present the older token it replaced.
	if v, err := b.storeRescue(ctx, e); err != nil {
		return nil, err
	} else if v != nil && !need(v) {
		return v, nil
	}

	// Claim the refresh across replicas, or adopt another replica's result.
	v, done, err := b.acquire(ctx, e, need)
	if err != nil || done {
		return v, err
	}
	v, err = b.refreshFamily(ctx, e, v)
	b.countRefresh(err)
	e.mu.Lock()
	e.lastErr = err
	e.mu.Unlock()
	return v, err
}

// refreshFamily presents the family's refresh token and acts on the answer.
func (b *Broker) refreshFamily(ctx context.Context, e *entry, v *view) (*view, error) {
	spec := v.cred.Spec
	ep, cc := spec.endpoint(), spec.clientCredentials()
	credChecked := false
	fam, famVersion := v.fam, v.famVersion
	key := familyKey(v.cred)
	// Provider calls end well before this replica's claim does.
	pctx, cancel := b.providerContext(ctx, fam)
	defer cancel()
	// giveUp releases the claim when the refresh ends with nothing to store,
	// so other replicas need not wait for its deadline.
	giveUp := func(err error) (*view, error) {
		b.release(ctx, e, key, fam, famVersion)
		return nil, err
	}
	var firstUnknown time.Time
	for attempt := 0; ; attempt++ {
		tok, err := b.provider.Refresh(pctx, ep, cc, fam.RefreshToken)
		if err == nil {
			return b.storeRefreshed(ctx, e, v.cred, v.credVersion, fam, famVersion, tok)
		}
		var pe *provider.Error
		if !errors.As(err, &pe) {
			return giveUp(&UnavailableError{Component: ComponentProvider, RetryAfter: time.Second, Err: err})
		}
		switch {
		case pe.Outcome == provider.OutcomeRejected && pe.Permanent() && !errors.Is(err, provider.ErrInvalidGrant):
			// The provider refused the client (wrong secret, inactive user
			// or org), not the token: the refresh token may work again once
			// an admin fixes it. Keep it; never destroy a working token. The
			// credential may have changed on another replica: re-read it
			// once before giving up.
			if !credChecked {
				credChecked = true
				if cred, version, rerr := b.readCredential(ctx, e.id); rerr == nil && version != v.credVersion {
					v = b.newView(cred, version, fam, famVersion)
					spec = cred.Spec
					ep, cc = spec.endpoint(), spec.clientCredentials()
					continue
				}
			}
			b.log.WarnContext(ctx, "provider refused the client; keeping the family", "credential", e.id, "provider_error", pe.Code)
			return giveUp(fmt.Errorf("%w (%s): check the credential's client id and secret, and the user and org at the provider", ErrClientRejected, pe.Code))

		case pe.Outcome == provider.OutcomeRejected && pe.Permanent():
			reason := ReasonRefreshTokenRejected
			switch {
			case fam.InDoubt:
				// Our own earlier refresh probably rotated the token and its
				// answer never arrived: a lost rotation, not theft.
				reason = ReasonLostRotation
			}
			b.log.WarnContext(ctx, "provider refused the refresh token; revoking the family",
				"credential", e.id, "family", fam.FamilyID, "generation", fam.Generation, "reason", reason, "provider_error", pe.Code, "err", pe)
			// The detail goes into the audit trail, which cannot be edited:
			// the OAuth code only, no provider text, even redacted.
			return nil, b.revokeFamily(ctx, e, key, fam, famVersion, reason, pe.Summary())

		case pe.Outcome == provider.OutcomeUnknown:
			now := b.opts.now()
			if firstUnknown.IsZero() {
				firstUnknown = now
			}
			if !fam.InDoubt {
				// Remember before retrying: if we crash, the next refresh must
				// still know an invalid_grant is probably our own lost rotation.
				fam, famVersion, err = b.markInDoubt(ctx, e, key, fam, famVersion)
				if err != nil {
					return nil, err
				}
			}
			// With no grace period a retry is a reuse if the provider did
			// rotate: allow exactly one, to learn the truth. Within a grace
			// period the previous token is still accepted: retry inside it.
			grace := spec.ReuseGrace
			retryAllowed := attempt == 0 || (grace > 0 && now.Sub(firstUnknown) < grace/2)
			b.log.WarnContext(ctx, "refresh outcome unknown; the provider may have rotated",
				"credential", e.id, "family", fam.FamilyID, "generation", fam.Generation, "retrying", retryAllowed, "err", pe.Error())
			if !retryAllowed {
				return giveUp(&UnavailableError{Component: ComponentProvider, RetryAfter: time.Second, Err: pe})
			}
			if err := ctxwait.Sleep(pctx, b.backoff(attempt, 0)); err != nil {
				return giveUp(&UnavailableError{Component: ComponentProvider, RetryAfter: time.Second, Err: pe})
			}

		default:
			// Not processed (connection refused, 429, 503 without a body) or
			// a temporary refusal: safe to retry, never a revocation.
			if attempt+1 >= b.opts.notProcessedTries {
				return giveUp(&UnavailableError{Component: ComponentProvider, RetryAfter: max(pe.RetryAfter, time.Second), Err: err})
			}
			if err := ctxwait.Sleep(pctx, b.backoff(attempt, pe.RetryAfter)); err != nil {
				return giveUp(&UnavailableError{Component: ComponentProvider, RetryAfter: time.Second, Err: err})
			}
		}
	}
}

func (b *Broker) backoff(attempt int, atLeast time.Duration) time.Duration {
	d := b.opts.retryBase << min(attempt, 8)
	return max(d, atLeast)
}

// storeRefreshed stores the outcome of a successful refresh: persist first,
// answer later.
func (b *Broker) storeRefreshed(ctx context.Context, e *entry, cred *credentialRecord, credVersion uint64, fam *familyRecord, famVersion uint64, tok *provider.Token) (*view, error) {
	now := b.opts.now()
	next := fam.clone()
	rotated := tok.RefreshToken != "" && tok.RefreshToken != fam.RefreshToken
	if rotated {
		next.RefreshToken = tok.RefreshToken
		next.LastRotationAt = now
	}
	next.Generation++
	next.LastRefreshAt = now
	next.LastRefreshRotated = &rotated
	next.InDoubt = false
	next.Claim = nil
	next.LastError, next.LastErrorAt = "", time.Time{}
	next.Access = b.newAccessToken(cred.Spec, fam.Access, tok, now)
	if note := lifetimeNote(cred.Spec, tok); note != "" {
		next.LastError, next.LastErrorAt = note, now
	}
	mismatch := tok.SignatureStatus == provider.SignatureMismatch
	if mismatch {
		next.LastError, next.LastErrorAt = "the provider's response signature did not match (is the client secret current?)", now
	}

	ctx, cancel := persistContext(ctx)
	defer cancel()
	key := familyKey(cred)
	version, err := b.writeFamily(ctx, key, next, famVersion)
	if errors.Is(err, store.ErrConflict) {
		return b.resultConflict(ctx, e, cred, fam, next, tok, rotated)
	}
	if err != nil {
		e.rescue.Store(&rescued{key: key, fam: next, baseVersion: famVersion})
		b.log.ErrorContext(ctx, "rotated refresh token NOT stored yet: holding it in memory and retrying; do not restart this server until the store recovers",
			"credential", e.id, "family", next.FamilyID, "generation", next.Generation, "err", err)
		b.audit(ctx, audit.Event{Action: audit.ActionRescuedToken, Credential: e.id, Family: next.FamilyID, Generation: next.Generation, Detail: "store write failed; retrying"})
		return nil, storeUnavailable(err)
	}
	v := b.newView(cred, credVersion, next, version)
	e.setView(v)
	e.used.Store(false)

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

// lifetimeNote says, for last_error, that the provider's lifetime of tok
// was not believed; "" when it was.
func lifetimeNote(spec Spec, tok *provider.Token) string {
	if tok.IgnoredExpiresIn <= 0 {
		return ""
	}
	return fmt.Sprintf("the provider said the access token lives %s, beyond the believable %s: it is refreshed as if it lived the credential's access token lifetime, %s",
		tok.IgnoredExpiresIn, provider.MaxExpiresIn, spec.accessTokenLifetime())
}

func (b *Broker) newAccessToken(spec Spec, prev *accessToken, tok *provider.Token, now time.Time) *accessToken {
	lifetime := tok.ExpiresIn
	if lifetime <= 0 {
		lifetime = spec.accessTokenLifetime()
	}
	a := &accessToken{
		Token:       tok.AccessToken,
		Type:        tok.TokenType,
		InstanceURL: tok.InstanceURL,
		Scopes:      append([]string(nil), tok.Scopes...),
		IssuedAt:    now,
		// Expiry counts from our clock when the answer arrived, not the
		// provider's issued_at: skew must not make us hand out dead tokens.
		ExpiresAt:   now.Add(lifetime),
		Fingerprint: Fingerprint(tok.AccessToken),
	}
	if !tok.IssuedAt.IsZero() && tok.IssuedAt.Before(now) {
		a.IssuedAt = tok.IssuedAt
	}
	if a.Type == "" {
		a.Type = "Bearer"
	}
	if prev != nil {
		if a.InstanceURL == "" {
			a.InstanceURL = prev.InstanceURL
		}
		if len(a.Scopes) == 0 {
			a.Scopes = append([]string(nil), prev.Scopes...)
		}
	}
	return a
}

// resultConflict handles a result write that met another version. Three
// cases: our write landed and only its answer was lost (a client-side retry
// replayed it) — success; the same family moved on without us (our claim was
// taken over) — never revoke anything of a live family, since at Salesforce
// revoking any of its refresh tokens kills it; another family replaced ours —
// our token is an orphan: revoke it.
func (b *Broker) resultConflict(ctx context.Context, e *entry, cred *credentialRecord, fam, next *familyRecord, tok *provider.Token, rotated bool) (*view, error) {
	cur, err := b.readView(ctx, e.id)
	if err != nil {
		return nil, err
	}
	e.setView(cur)
	if cur.fam.FamilyID == next.FamilyID {
		if cur.fam.Status == StatusActive && cur.fam.RefreshToken == next.RefreshToken && cur.fam.Generation >= next.Generation {
			return cur, nil
		}
		if cur.fam.Status == StatusRevoked {
			// The family was revoked (deliberately, on any replica) while we
			// held the claim: the revocation wins. The token we just obtained
			// must not outlive it at a provider that revokes single tokens.
			b.log.WarnContext(ctx, "the family was revoked during a refresh; discarding the refreshed tokens",
				"credential", e.id, "family", fam.FamilyID, "generation", fam.Generation)
			b.revokeDiscarded(ctx, e, cred, tok, rotated)
			return nil, reauthRequired(e.id, cur.fam)
		}
		b.log.ErrorContext(ctx, "refresh result lost a check-and-set race within the same family (our claim was taken over); keeping the stored state",
			"credential", e.id, "family", fam.FamilyID, "generation", fam.Generation)
		return nil, fmt.Errorf("%w: another replica took over the refresh of %s", ErrConflict, e.id)
	}
	// Another family replaced ours while the refresh ran (a reauthentication
	// or a deletion won): the new refresh token belongs to a family nobody
	// uses; revoke it at the provider rather than leave it alive.
	b.log.WarnContext(ctx, "the family changed while refreshing; discarding the refreshed tokens",
		"credential", e.id, "family", fam.FamilyID, "generation", fam.Generation)
	b.revokeDiscarded(ctx, e, cred, tok, rotated)
	return nil, fmt.Errorf("%w: the token family of %s changed during a refresh", ErrConflict, e.id)
}

// revokeDiscarded revokes, best effort, a refresh token a refresh obtained
// (rotated) but could not store.
func (b *Broker) revokeDiscarded(ctx context.Context, e *entry, cred *credentialRecord, tok *provider.Token, rotated bool) {
	if !rotated {
		return
	}
	if err := b.provider.Revoke(ctx, cred.Spec.endpoint(), cred.Spec.clientCredentials(), tok.RefreshToken); err != nil {
		b.log.WarnContext(ctx, "could not revoke the discarded refresh token", "credential", e.id, "err", err)
	}
}

// writeFamily stores a family record with check-and-set on expected,
// retrying transient store errors. ErrConflict is returned at once.
func (b *Broker) writeFamily(ctx context.Context, key string, fam *familyRecord, expected uint64) (uint64, error) {
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

// rescued is a rotated family the store has not accepted yet.
type rescued struct {
	key         string
	fam         *familyRecord
	baseVersion uint64
}

// storeRescue writes a held rotated family, if any. It returns the new view
// once stored, nil when there was nothing to store.
func (b *Broker) storeRescue(ctx context.Context, e *entry) (*view, error) {
	r := e.rescue.Load()
	if r == nil {
		return nil, nil
	}
	version, err := b.writeFamily(ctx, r.key, r.fam, r.baseVersion)
	if errors.Is(err, store.ErrConflict) {
		return b.resolveHeldConflict(ctx, e, r)
	}
	if err != nil {
		return nil, storeUnavailable(err)
	}
	e.rescue.CompareAndSwap(r, nil)
	b.log.InfoContext(ctx, "held rotated refresh token is now stored", "credential", e.id, "generation", r.fam.Generation)
	cur := e.view.Load()
	v := b.newView(cur.cred, cur.credVersion, r.fam, version)
	e.setView(v)
	return v, nil
}

// markInDoubt records that the family's refresh token may have been rotated
// by a refresh whose answer was lost.
func (b *Broker) markInDoubt(ctx context.Context, e *entry, key string, fam *familyRecord, version uint64) (*familyRecord, uint64, error) {
	next := fam.clone()
	next.InDoubt = true
	ctx, cancel := persistContext(ctx)
	defer cancel()
	v, err := b.writeFamily(ctx, key, next, version)
	if err != nil {
		if errors.Is(err, store.ErrConflict) {
			return nil, 0, fmt.Errorf("%w: the token family of %s changed during a refresh", ErrConflict, e.id)
		}
		return nil, 0, storeUnavailable(err)
	}
	return next, v, nil
}

// revokeFamily marks the family revoked, forgets its tokens, audits it and
// notifies watchers. It returns the error callers receive.
func (b *Broker) revokeFamily(ctx context.Context, e *entry, key string, fam *familyRecord, version uint64, reason RevocationReason, detail string) error {
	now := b.opts.now()
	next := revokedRecord(fam, reason, detail, now)
	ctx, cancel := persistContext(ctx)
	defer cancel()
	for {
		newVersion, err := b.writeFamily(ctx, key, next, version)
		if err == nil {
			version = newVersion
			break
		}
		if !errors.Is(err, store.ErrConflict) {
			// The provider has revoked the family whether or not we can say
			// so: stop handing out its tokens now, and let the next refresh
			// (which will meet invalid_grant again) record it.
			e.dropAccess()
			return storeUnavailable(err)
		}
		cur, rerr := b.readView(ctx, e.id)
		if rerr != nil {
			return rerr
		}
		if cur.fam.FamilyID != fam.FamilyID || cur.fam.Status != StatusActive || cur.fam.Generation != fam.Generation {
			e.setView(cur)
			if cur.fam.Status == StatusActive {
				return fmt.Errorf("%w: a new token family of %s is active", ErrConflict, e.id)
			}
			return reauthRequired(e.id, cur.fam)
		}
		version = cur.famVersion
	}
	cur := e.view.Load()
	e.setView(b.newView(cur.cred, cur.credVersion, next, version))
	b.audit(ctx, audit.Event{Action: audit.ActionFamilyRevoked, Credential: e.id, Family: fam.FamilyID, Generation: fam.Generation, Reason: string(reason), Detail: detail})
	b.notify(ctx, Notice{
		CredentialID: e.id, FamilyID: fam.FamilyID, Generation: fam.Generation,
		Kind: NoticeFamilyRevoked, Reason: reason, Detail: revocationDetail(reason), DetectedAt: now,
	})
	return reauthRequired(e.id, next)
}

// revokedRecord returns fam revoked for reason: no tokens, no claim (a
// replica holding one then fails its result's check-and-set).
func revokedRecord(fam *familyRecord, reason RevocationReason, detail string, now time.Time) *familyRecord {
	next := fam.clone()
	next.Status = StatusRevoked
	next.RefreshToken = ""
	next.Access = nil
	next.InDoubt = false
	next.Claim = nil
	next.RevokedReason, next.RevokedAt = reason, now
	next.LastError, next.LastErrorAt = detail, now
	return next
}

func revocationDetail(r RevocationReason) string {
	switch r {
	case ReasonRefreshTokenRejected:
		return "the provider refused the refresh token: an old token of this family was reused elsewhere (theft or a legacy client), or it expired or was revoked at the provider"
	case ReasonLostRotation:
		return "a refresh answer was lost after the provider rotated; with no reuse grace period the family is gone (not theft)"
	case ReasonClientRejected:
		return "the provider refused the client (secret, user or org no longer valid)"
	case ReasonAdmin:
		return "revoked by an administrator"
	case ReasonAdminRevoked:
		return "revoked deliberately by an operator or administrator (RevokeCredential)"
	case ReasonSuperseded:
		return "replaced by a new family"
	case ReasonRevokedAtProvider:
		return "the provider reports the refresh token inactive: the family was revoked there (an old token of it reused elsewhere, by theft or a legacy client, or revoked by an admin or user); detected by introspection, without presenting it"
	default:
		return ""
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
		v.fam = cur.fam.clone()
		v.fam.Access = nil
		if e.view.CompareAndSwap(cur, &v) {
			return
		}
	}
}

// resolveHeldConflict handles a held rotation whose base version moved: the
// store may already hold it (a write that succeeded with its answer lost), or
// a new family may have replaced it.
func (b *Broker) resolveHeldConflict(ctx context.Context, e *entry, r *rescued) (*view, error) {
	cur, err := b.readView(ctx, e.id)
	if err != nil {
		return nil, err
	}
	// In every case the store's state is the truth from now on.
	e.rescue.CompareAndSwap(r, nil)
	e.setView(cur)
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
	return cur, nil
}
