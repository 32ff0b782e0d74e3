package broker

import (
	"context"
	"errors"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/authflow"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/internal/textcheck"
	"github.com/rotavault/rotavault/broker/notice"
	"github.com/rotavault/rotavault/broker/registry"
	"github.com/rotavault/rotavault/provider"
)

const maxRefreshTokenLen = 4096

// ImportRefreshToken installs a refresh token obtained elsewhere, then
// refreshes at once to prove it works. When the provider cannot be reached
// for that refresh the token stays stored, unproven (Activation.Unproven),
// and the broker retries the refresh: importing it again would gain
// nothing. Errors: *InvalidArgumentError, ErrNotFound, ErrReauthRequired
// (the provider refused it), ErrClientRejected, *UnavailableError (the
// store; or the provider before anything was stored).
func (b *Broker) ImportRefreshToken(ctx context.Context, id, refreshToken string) (authflow.Activation, error) {
	if err := credspec.ValidateID(id); err != nil {
		return authflow.Activation{}, err
	}
	if refreshToken == "" || len(refreshToken) > maxRefreshTokenLen || !textcheck.Printable(refreshToken) {
		return authflow.Activation{}, brokererr.Invalid("refresh_token", "required, printable, at most %d bytes", maxRefreshTokenLen)
	}
	e, err := b.entry(ctx, id)
	if err != nil {
		return authflow.Activation{}, err
	}
	// The replaced family is not revoked at the provider: an imported token
	// may belong to that very family (a re-import), and revoking it would
	// kill the token just installed.
	act, in, err := b.installFamily(ctx, e, "", refreshToken, nil, false)
	if err != nil {
		return authflow.Activation{}, err
	}
	// The activation notice is written beside the proving refresh; the
	// answer waits for both.
	defer in.logged()
	// Stored first, with the claim for the refresh that proves it; now
	// prove it. A refused token revokes the family just installed and says
	// so.
	stale := act.Generation
	v, err := b.refresh(ctx, e, in.lease, func(v *view) bool { return v.fam.FamilyID == act.FamilyID && v.fam.Generation == stale })
	var ue *brokererr.UnavailableError
	if errors.As(err, &ue) && ue.Component == brokererr.ComponentProvider {
		b.log.WarnContext(ctx, "imported refresh token stored, not yet proven: the provider could not be reached; retrying", "credential", id, "family", act.FamilyID, "err", err)
		act.Unproven = true
		return act, nil
	}
	if err != nil {
		return authflow.Activation{}, err
	}
	act.Generation = v.fam.Generation
	return act, nil
}

// installFamily stores a new family for the credential, replacing the old
// one, and announces it. With revokeOld the old family is revoked at the
// provider (best effort), leaving no second live family behind. A non-empty
// incarnation must be the stored credential's: a flow's grant never goes
// into a credential deleted and created again since the flow started
// (ErrNotFound). An imported token (tok nil) is stored claimed by this
// replica for its proving refresh.
func (b *Broker) installFamily(ctx context.Context, e *entry, incarnation, refreshToken string, tok *provider.Token, revokeOld bool) (authflow.Activation, installed, error) {
	now := b.opts.Now()
	familyID := family.RandomID(12)
	var old *view
	var fam *family.Record
	// No family read: its check-and-set decides whether it changed.
	base, err := b.withFreshCredential(ctx, e, e.view.Load())
	if err != nil {
		return authflow.Activation{}, installed{}, err
	}
	v, err := b.updateFamily(ctx, e, base, func(cur *view) (*family.Record, error) {
		if incarnation != "" && cur.cred.Incarnation != incarnation {
			return nil, authflow.IncarnationGone(e.id)
		}
		fam = family.New(familyID, refreshToken, cur.cred.Spec, tok, now)
		old = cur
		if tok == nil {
			return cur.fam.ReplacedClaimedBy(fam, b.opts.ReplicaID, now.Add(b.opts.ClaimTTLFor(cur.cred.Spec)))
		}
		return cur.fam.ReplacedBy(fam)
	})
	if err != nil {
		return authflow.Activation{}, installed{}, err
	}
	e.mu.Lock()
	e.rescue.Store(nil)
	e.lastErr, e.retryAt = nil, time.Time{}
	e.mu.Unlock()
	e.wake() // the proving refresh waits for no earlier failure's retry
	if live := old.fam.LiveToken(); revokeOld && live != "" {
		rctx, cancel := context.WithTimeout(ctx, revokeTimeout) // a hung provider must not hold the install's answer
		err := b.provider.Revoke(rctx, old.cred.Spec.Endpoint(), old.cred.Spec.ClientCredentials(), live)
		if cancel(); err != nil {
			b.log.WarnContext(ctx, "could not revoke the replaced family at the provider", "credential", e.id, "family", old.fam.FamilyID, "err", err)
		}
	}
	b.log.InfoContext(ctx, "new token family installed", "credential", e.id, "family", fam.FamilyID)
	in := installed{logged: b.announcing(ctx, e.id, fam, audit.Event{Action: audit.ActionReauthenticated}, &notice.Notice{Kind: notice.FamilyActivated, DetectedAt: now})}
	if tok == nil {
		in.lease = &claimLease{b: b, e: e, v: v}
	}
	return authflow.Activation{FamilyID: fam.FamilyID, Generation: fam.Generation, ActivatedAt: now}, in, nil
}

// installed is what installFamily leaves running: an import's claim for its
// proving refresh, and the wait for the activation's notice and audit
// record to be written, which the caller must call.
type installed struct {
	lease  *claimLease
	logged func()
}

// flowCore is the rotation core as the authorization flows see it
// (authflow.Core): credentials to start and finish flows for, and the
// install of the family an approved grant brings.
type flowCore struct{ b *Broker }

var _ authflow.Core = flowCore{}

func (c flowCore) ValidateID(id string) error { return credspec.ValidateID(id) }

func (c flowCore) ValidateEndpointURL(raw string) error { return credspec.ValidateEndpointURL(raw) }

func (c flowCore) Credential(ctx context.Context, id string, stored bool) (authflow.Credential, error) {
	e, err := c.b.entry(ctx, id)
	if err != nil {
		return authflow.Credential{}, err
	}
	cred := e.view.Load().cred
	if stored {
		if cred, _, err = registry.ReadCredential(ctx, c.b.store, id); err != nil {
			return authflow.Credential{}, err
		}
	}
	spec := cred.Spec
	return authflow.Credential{
		ID: cred.ID, Incarnation: cred.Incarnation, Generic: spec.ProviderKind == credspec.ProviderOAuth2,
		Scopes: spec.Scopes, Endpoint: spec.Endpoint(), Client: spec.ClientCredentials(),
		ResolveScopes: func(requested []string) ([]string, error) { return spec.FlowScopes(requested) },
	}, nil
}

func (c flowCore) Install(ctx context.Context, id, incarnation string, tok *provider.Token) (authflow.Activation, error) {
	e, err := c.b.entry(ctx, id)
	if err != nil {
		return authflow.Activation{}, err
	}
	act, in, err := c.b.installFamily(ctx, e, incarnation, tok.RefreshToken, tok, true)
	if err == nil {
		in.logged()
	}
	return act, err
}
