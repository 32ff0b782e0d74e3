package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/internal/textcheck"
	"github.com/rotavault/rotavault/broker/notice"
	"github.com/rotavault/rotavault/provider"
)

// MaxRevocationReasonLen bounds the free-text reason of RevokeCredential: it
// goes into audit records, which are not a place for essays (or pasted
// secrets).
const MaxRevocationReasonLen = 512

// revokeTimeout bounds the call to the provider's revocation endpoint. The
// family is already revoked in the store when it runs, so a slow provider
// only delays the answer, and the outcome is reported as unconfirmed.
const revokeTimeout = 10 * time.Second

// Revocation reports the outcome of RevokeCredential.
type Revocation struct {
	FamilyID           string
	Generation         uint64
	ProviderRevocation notice.ProviderRevocation
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
// changed), ErrConflict (the family kept changing).
func (b *Broker) RevokeCredential(ctx context.Context, id, reason string) (Revocation, error) {
	if err := credspec.ValidateID(id); err != nil {
		return Revocation{}, err
	}
	if reason == "" || len(reason) > MaxRevocationReasonLen || !textcheck.Printable(reason) {
		return Revocation{}, brokererr.Invalid("reason", "required, printable, at most %d bytes", MaxRevocationReasonLen)
	}
	e, err := b.entry(ctx, id)
	if err != nil {
		return Revocation{}, err
	}
	// The cached view may lag another replica's refresh or revocation:
	// decide on the store's state (no base). Dropping another replica's
	// claim is the point: its result write then fails the check-and-set and
	// finds the family revoked.
	r := family.Revocation{Reason: notice.ReasonAdminRevoked, Detail: "revoked deliberately: " + reason, AuditDetail: reason}
	v, res, err := b.revokeFamily(ctx, e, nil, r, func(cur *view) error {
		switch cur.fam.Status {
		case family.StatusActive:
			return nil
		case family.StatusRevoked:
			return errAlreadyRevoked
		}
		return family.ReauthRequired(id, cur.fam)
	})
	if errors.Is(err, errAlreadyRevoked) {
		ctx, cancel := persistContext(ctx)
		defer cancel()
		return b.revokedAlready(ctx, e, v, reason)
	}
	if err != nil {
		return Revocation{}, err
	}
	b.log.InfoContext(ctx, "token family revoked deliberately", "credential", id, "family", v.fam.FamilyID, "generation", v.fam.Generation,
		"provider_confirmed", res == notice.ProviderRevocationConfirmed)
	return Revocation{FamilyID: v.fam.FamilyID, Generation: v.fam.Generation, ProviderRevocation: res}, nil
}

// errAlreadyRevoked: RevokeCredential found the family revoked.
var errAlreadyRevoked = errors.New("broker: family already revoked")

// revokeFamily is the one revocation path: it marks the family revoked in
// the store through updateFamily (deciding on base first, or on a fresh
// read when base is nil; still says whether a state read after a conflict
// is still the family to revoke, and its error ends the attempt, returned
// with that state), then revokes a deliberately revoked family's refresh
// token at the provider, then writes the audit record and the notice. It
// runs on a context of its own: once the store says revoked, the rest must
// happen even if the caller goes away. Errors: still's, and
// updateFamily's (a write error wraps errFamilyNotWritten).
func (b *Broker) revokeFamily(ctx context.Context, e *entry, base *view, r family.Revocation, still func(cur *view) error) (*view, notice.ProviderRevocation, error) {
	ctx, cancel := persistContext(ctx)
	defer cancel()
	now := b.opts.Now()
	v, err := b.updateFamily(ctx, e, base, func(cur *view) (*family.Record, error) {
		if err := still(cur); err != nil {
			return nil, err
		}
		return cur.fam.Revoked(r.Reason, r.Detail, now)
	})
	if err != nil {
		return v, notice.ProviderRevocationNone, err
	}
	res := notice.ProviderRevocationNone
	noticeDetail, auditDetail := r.Details(v.cred.Spec.ReuseGrace)
	if v.fam.PendingRevocation != "" {
		res = b.revokeAtProvider(ctx, e, v)
		if res == notice.ProviderRevocationUnconfirmed {
			noticeDetail += "; the provider has not confirmed revoking the refresh token"
			auditDetail += " (provider revocation unconfirmed)"
		}
	}
	b.announce(ctx, e.id, v.fam,
		audit.Event{Action: audit.ActionFamilyRevoked, Reason: string(r.Reason), Detail: auditDetail},
		&notice.Notice{Kind: notice.FamilyRevoked, Reason: r.Reason, Detail: noticeDetail, ProviderRevocation: res, DetectedAt: now})
	return v, res, nil
}

// announce is the one place that writes the audit record and the notice of
// a change of family: both name fam's credential, family and generation.
// A nil notice writes the audit record only.
func (b *Broker) announce(ctx context.Context, id string, fam *family.Record, ev audit.Event, n *notice.Notice) {
	b.announcing(ctx, id, fam, ev, n)()
}

// announcing is announce with the writes left running: the notice and the
// audit record take their places in the log and the trail at once, and
// are written side by side and beside whatever the caller does next,
// until the caller calls logged (it must).
func (b *Broker) announcing(ctx context.Context, id string, fam *family.Record, ev audit.Event, n *notice.Notice) (logged func()) {
	ev.Credential, ev.Family, ev.Generation = id, fam.FamilyID, fam.Generation
	noticed := func() {}
	if n != nil {
		n.CredentialID, n.FamilyID, n.Generation = id, fam.FamilyID, fam.Generation
		noticed = b.notify(ctx, *n)
	}
	audited := b.auditing(ctx, ev)
	return func() { noticed(); audited() }
}

// revoke revokes the lease's family after the provider refused its refresh
// token, unless a re-read after a conflict finds another generation or
// family (then that state decides the caller's error). It returns the error
// callers receive.
func (l *claimLease) revoke(ctx context.Context, reason notice.RevocationReason, detail string) error {
	e, fam := l.e, l.v.fam
	v, _, err := l.b.revokeFamily(ctx, e, l.v, family.Revocation{Reason: reason, Detail: detail, AuditDetail: detail}, func(cur *view) error {
		if cur.fam.FamilyID == fam.FamilyID && cur.fam.Status == family.StatusActive && cur.fam.Generation == fam.Generation {
			return nil
		}
		if cur.fam.Status == family.StatusActive {
			return fmt.Errorf("%w: a new token family of %s is active", brokererr.ErrConflict, e.id)
		}
		return family.ReauthRequired(e.id, cur.fam)
	})
	if errors.Is(err, errFamilyNotWritten) {
		// The provider has revoked the family whether or not we can say
		// so: stop handing out its tokens now, and let the next refresh
		// (which will meet invalid_grant again) record it.
		e.dropAccess()
	}
	if err != nil {
		return err
	}
	return family.ReauthRequired(e.id, v.fam)
}

// revokedAlready answers a revocation of a revoked family: nothing changes,
// except that a provider revocation left unconfirmed is retried. Watchers
// were told when the family was revoked; no second notice.
func (b *Broker) revokedAlready(ctx context.Context, e *entry, v *view, reason string) (Revocation, error) {
	res := Revocation{FamilyID: v.fam.FamilyID, Generation: v.fam.Generation, AlreadyRevoked: true}
	if v.fam.PendingRevocation == "" {
		if v.fam.RevokedReason == notice.ReasonAdminRevoked {
			res.ProviderRevocation = notice.ProviderRevocationConfirmed
		}
		return res, nil
	}
	res.ProviderRevocation = b.revokeAtProvider(ctx, e, v)
	outcome := "confirmed"
	if res.ProviderRevocation == notice.ProviderRevocationUnconfirmed {
		outcome = "still unconfirmed"
	}
	b.announce(ctx, e.id, v.fam, audit.Event{Action: audit.ActionFamilyRevoked,
		Reason: string(notice.ReasonAdminRevoked), Detail: reason + " (retried the provider revocation: " + outcome + ")"}, nil)
	return res, nil
}

// revokeAtProvider presents the revoked family's pending token to the
// revocation endpoint and, once the provider confirms, forgets it.
func (b *Broker) revokeAtProvider(ctx context.Context, e *entry, v *view) notice.ProviderRevocation {
	token := v.fam.PendingRevocation
	rctx, cancel := context.WithTimeout(ctx, revokeTimeout)
	err := b.provider.Revoke(rctx, v.cred.Spec.Endpoint(), v.cred.Spec.ClientCredentials(), token)
	cancel()
	var pe *provider.Error
	// Salesforce answers 400 invalid_token for a token that is already dead
	// (RFC 7009 servers answer 200): either way it is no longer live.
	if err != nil && !(errors.As(err, &pe) && pe.Outcome == provider.OutcomeRejected && pe.Code == "invalid_token") {
		b.log.WarnContext(ctx, "could not revoke the family at the provider; it is revoked in Rotavault, retry RevokeCredential",
			"credential", e.id, "family", v.fam.FamilyID, "err", err)
		return notice.ProviderRevocationUnconfirmed
	}
	b.forgetPending(ctx, e, v)
	return notice.ProviderRevocationConfirmed
}

// forgetPending removes a confirmed-revoked token from the family record.
// v was just read or written, so the first write trusts it; the record is
// re-read only when another write came in between.
func (b *Broker) forgetPending(ctx context.Context, e *entry, v *view) {
	familyID, token := v.fam.FamilyID, v.fam.PendingRevocation
	_, err := b.updateFamily(ctx, e, v, func(cur *view) (*family.Record, error) {
		if cur.fam.FamilyID != familyID || cur.fam.PendingRevocation != token {
			return nil, nil // replaced or cleared meanwhile
		}
		return cur.fam.ProviderConfirmed()
	})
	if err != nil {
		b.log.WarnContext(ctx, "could not clear a revoked token from the store", "credential", e.id, "err", err)
	}
}
