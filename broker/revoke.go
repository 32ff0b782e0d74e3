package broker

import (
	"context"
	"errors"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store"
)

// MaxRevocationReasonLen bounds the free-text reason of RevokeCredential: it
// goes into audit records, which are not a place for essays (or pasted
// secrets).
const MaxRevocationReasonLen = 512

// revokeTimeout bounds the call to the provider's revocation endpoint. The
// family is already revoked in the store when it runs, so a slow provider
// only delays the answer, and the outcome is reported as unconfirmed.
const revokeTimeout = 10 * time.Second

// ProviderRevocation says whether the provider confirmed a revocation.
type ProviderRevocation int

const (
	// ProviderRevocationNone: Rotavault did not revoke at the provider.
	ProviderRevocationNone ProviderRevocation = iota
	ProviderRevocationConfirmed
	ProviderRevocationUnconfirmed
)

// Revocation reports the outcome of RevokeCredential.
type Revocation struct {
	FamilyID           string
	Generation         uint64
	ProviderRevocation ProviderRevocation
	AlreadyRevoked     bool
}

// RevokeCredential deliberately revokes the credential's token family. The
// store is written first: it is the fence every replica's refresh checks
// (a claim's result is written with check-and-set), so once it says revoked
// no replica stores or serves a token of the family again. Only then is the
// refresh token revoked at the provider; if that fails, the token is kept in
// the revoked record (never presented for a refresh) so that a second call
// can retry. A family already revoked is left as it is: the call is
// idempotent. Errors: *InvalidArgumentError, ErrNotFound, ErrReauthRequired
// (no family was ever installed), *UnavailableError (the store; nothing
// changed).
func (b *Broker) RevokeCredential(ctx context.Context, id, reason string) (Revocation, error) {
	if err := b.validateID(id); err != nil {
		return Revocation{}, err
	}
	if reason == "" || len(reason) > MaxRevocationReasonLen || !printable(reason) {
		return Revocation{}, invalid("reason", "required, printable, at most %d bytes", MaxRevocationReasonLen)
	}
	e, err := b.entry(ctx, id)
	if err != nil {
		return Revocation{}, err
	}
	// Once the store says revoked, the revocation must be finished (provider
	// call, audit, notice) even if the caller goes away.
	ctx, cancel := persistContext(ctx)
	defer cancel()
	var (
		v    *view
		next *familyRecord
	)
	for {
		// The cached view may lag another replica's refresh or revocation:
		// decide on the store's state.
		cur, err := b.readView(ctx, id)
		if err != nil {
			return Revocation{}, err
		}
		e.setView(cur)
		switch cur.fam.Status {
		case StatusActive:
		case StatusRevoked:
			return b.revokedAlready(ctx, e, cur, reason)
		default:
			return Revocation{}, reauthRequired(id, cur.fam)
		}
		// Dropping another replica's claim is the point: its result write
		// then fails the check-and-set and finds the family revoked.
		next = revokedRecord(cur.fam, ReasonAdminRevoked, "revoked deliberately: "+reason, b.opts.now())
		next.PendingRevocation = cur.fam.RefreshToken
		version, err := b.writeFamily(ctx, familyKey(cur.cred), next, cur.famVersion)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return Revocation{}, storeUnavailable(err)
		}
		v = b.newView(cur.cred, cur.credVersion, next, version)
		e.setView(v)
		break
	}
	res := Revocation{FamilyID: next.FamilyID, Generation: next.Generation}
	res.ProviderRevocation = b.revokeAtProvider(ctx, e, v)
	detail := revocationDetail(ReasonAdminRevoked)
	auditDetail := reason
	if res.ProviderRevocation == ProviderRevocationUnconfirmed {
		detail += "; the provider has not confirmed revoking the refresh token"
		auditDetail += " (provider revocation unconfirmed)"
	}
	b.audit(ctx, audit.Event{Action: audit.ActionFamilyRevoked, Credential: id, Family: next.FamilyID, Generation: next.Generation, Reason: string(ReasonAdminRevoked), Detail: auditDetail})
	b.log.InfoContext(ctx, "token family revoked deliberately", "credential", id, "family", next.FamilyID, "generation", next.Generation,
		"provider_confirmed", res.ProviderRevocation == ProviderRevocationConfirmed)
	b.notify(ctx, Notice{
		CredentialID: id, FamilyID: next.FamilyID, Generation: next.Generation,
		Kind: NoticeFamilyRevoked, Reason: ReasonAdminRevoked, Detail: detail,
		ProviderRevocation: res.ProviderRevocation, DetectedAt: b.opts.now(),
	})
	return res, nil
}

// revokedAlready answers a revocation of a revoked family: nothing changes,
// except that a provider revocation left unconfirmed is retried. Watchers
// were told when the family was revoked; no second notice.
func (b *Broker) revokedAlready(ctx context.Context, e *entry, v *view, reason string) (Revocation, error) {
	res := Revocation{FamilyID: v.fam.FamilyID, Generation: v.fam.Generation, AlreadyRevoked: true}
	if v.fam.PendingRevocation == "" {
		if v.fam.RevokedReason == ReasonAdminRevoked {
			res.ProviderRevocation = ProviderRevocationConfirmed
		}
		return res, nil
	}
	res.ProviderRevocation = b.revokeAtProvider(ctx, e, v)
	outcome := "confirmed"
	if res.ProviderRevocation == ProviderRevocationUnconfirmed {
		outcome = "still unconfirmed"
	}
	b.audit(ctx, audit.Event{Action: audit.ActionFamilyRevoked, Credential: e.id, Family: v.fam.FamilyID, Generation: v.fam.Generation,
		Reason: string(ReasonAdminRevoked), Detail: reason + " (retried the provider revocation: " + outcome + ")"})
	return res, nil
}

// revokeAtProvider presents the revoked family's pending token to the
// revocation endpoint and, once the provider confirms, forgets it.
func (b *Broker) revokeAtProvider(ctx context.Context, e *entry, v *view) ProviderRevocation {
	token := v.fam.PendingRevocation
	rctx, cancel := context.WithTimeout(ctx, revokeTimeout)
	err := b.provider.Revoke(rctx, v.cred.Spec.endpoint(), v.cred.Spec.clientCredentials(), token)
	cancel()
	var pe *provider.Error
	// Salesforce answers 400 invalid_token for a token that is already dead
	// (RFC 7009 servers answer 200): either way it is no longer live.
	if err != nil && !(errors.As(err, &pe) && pe.Outcome == provider.OutcomeRejected && pe.Code == "invalid_token") {
		b.log.WarnContext(ctx, "could not revoke the family at the provider; it is revoked in Rotavault, retry RevokeCredential",
			"credential", e.id, "family", v.fam.FamilyID, "err", err)
		return ProviderRevocationUnconfirmed
	}
	b.forgetPending(ctx, e, v)
	return ProviderRevocationConfirmed
}

// forgetPending removes a confirmed-revoked token from the family record.
// v was just read or written, so the first write trusts it; the record is
// re-read only when another write came in between.
func (b *Broker) forgetPending(ctx context.Context, e *entry, v *view) {
	key, fam, version := familyKey(v.cred), v.fam, v.famVersion
	familyID, token := fam.FamilyID, fam.PendingRevocation
	err := func() error {
		for {
			next := fam.clone()
			next.PendingRevocation = ""
			newVersion, err := b.writeFamily(ctx, key, next, version)
			if err == nil {
				e.setView(b.newView(v.cred, v.credVersion, next, newVersion))
				return nil
			}
			if !errors.Is(err, store.ErrConflict) {
				return err
			}
			rec, err := b.store.Get(ctx, key)
			if err != nil {
				return err
			}
			fam = &familyRecord{}
			if err := decodeRecord(rec.Value, fam, &fam.Format); err != nil {
				return err
			}
			if fam.FamilyID != familyID || fam.PendingRevocation != token {
				return nil // replaced or cleared meanwhile
			}
			version = rec.Version
		}
	}()
	if err != nil {
		b.log.WarnContext(ctx, "could not clear a revoked token from the store", "credential", e.id, "err", err)
	}
}

// liveToken is the refresh token of fam that may still be live at the
// provider: an active family's, or a revoked one's pending revocation.
func liveToken(fam *familyRecord) string {
	switch fam.Status {
	case StatusActive:
		return fam.RefreshToken
	case StatusRevoked:
		return fam.PendingRevocation
	}
	return ""
}
