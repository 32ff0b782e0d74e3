package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/internal/versionwait"
	"github.com/rotavault/rotavault/broker/registry"
	"github.com/rotavault/rotavault/broker/spans"
)

// Cross-replica rotation. Replicas share nothing but the store, so the
// right to present a family's refresh token is claimed there: a
// check-and-set write of (holder, deadline) on the family record. The
// version that write produces is the fencing token: the holder's result is
// written with check-and-set on it, so a holder that lost its claim (paused
// past the deadline and taken over) cannot overwrite its successor. The
// provider never sees the fence; what keeps it from seeing two refreshes is
// timing: the holder's provider calls end claimMargin before the claim's
// deadline, and nobody takes a claim over before that deadline. The protocol
// is safe while process pauses plus clock skew between replicas stay below
// claimMargin. See docs/rotation-protocol.md.

// claimLease is this replica's claim on a family, as etcd's Mutex carries
// its own revision: v is the family as the claim's last write left it, and
// v.famVersion is the fence every later write of the holder is a
// check-and-set on. A lease whose fence moved (taken over, revoked,
// replaced) writes nothing more, except the revocation an invalid_grant
// calls for, decided again on the state read (claimLease.revoke).
type claimLease struct {
	b *Broker
	e *entry
	v *view
}

// errClaimedElsewhere: another replica's claim on the family is live.
var errClaimedElsewhere = errors.New("broker: another replica is refreshing")

// acquire runs until this replica holds the claim on the family, or another
// replica's refresh produced a view that passes need. It returns the lease
// to refresh with, or the adopted view (lease nil). A claim held already
// (held: an import's install) serves while the family is as it left it.
func (b *Broker) acquire(ctx context.Context, e *entry, need func(*view) bool, held *claimLease) (lease *claimLease, adopted *view, err error) {
	ctx, span := spans.Start(ctx, ctx, spans.Claim, e.id)
	defer func() {
		// "claimed": this replica refreshes; "adopted": another replica's
		// result serves.
		if lease != nil {
			spans.End(span, lease.v.generation(), "claimed", err)
		} else {
			spans.End(span, adopted.generation(), "adopted", err)
		}
	}()
	if held != nil && e.view.Load() == held.v {
		switch err := held.ensureWindow(ctx); {
		case err == nil:
			return held, nil, nil
		case !errors.Is(err, errFenceMoved):
			return nil, nil, err
		}
	}
	// The first attempt trusts the family state this replica last saw and
	// claims with check-and-set on its version: if another replica changed
	// the family since, the claim conflicts and updateFamily reads it.
	// That saves a Vault read per rotation on the common path.
	optimistic := true
	for {
		base, err := b.claimBase(ctx, e, optimistic)
		optimistic = false
		if err != nil {
			return nil, nil, err
		}
		e.setView(base)
		claimed := false
		v, err := b.updateFamily(ctx, e, base, func(cur *view) (*family.Record, error) {
			claimed = false
			if !need(cur) {
				return nil, nil // another replica's refresh serves us
			}
			if cur.fam.Status != family.StatusActive {
				return nil, family.ReauthRequired(e.id, cur.fam)
			}
			now := b.opts.Now()
			deadline := now.Add(b.opts.ClaimTTLFor(cur.cred.Spec))
			c := cur.fam.Claim
			if c != nil && c.Holder != b.opts.ReplicaID {
				if now.Before(c.Deadline) && b.opts.ExclusiveStore {
					b.log.WarnContext(ctx, "taking over a refresh claim of a previous process (the store is this process's alone)", "credential", e.id, "holder", c.Holder, "deadline", c.Deadline)
					claimed = true
					return cur.fam.TakenOverFromDead(b.opts.ReplicaID, deadline)
				}
				if now.Before(c.Deadline) {
					return nil, errClaimedElsewhere
				}
				b.log.WarnContext(ctx, "taking over an expired refresh claim", "credential", e.id, "holder", c.Holder, "deadline", c.Deadline)
			}
			claimed = true
			return cur.fam.ClaimedBy(b.opts.ReplicaID, deadline, now)
		})
		switch {
		case errors.Is(err, errClaimedElsewhere):
			// Another replica is refreshing: wait for its result (the family
			// record's version moving) rather than present the same token a
			// second time, or for its claim's deadline.
			b.metrics.ClaimWaits.Add(1)
			if err := versionwait.Until(ctx, b.store, v.cred.FamilyKey(), v.famVersion, v.fam.Claim.Deadline, b.opts.Claim.Poll, b.opts.Now); err != nil {
				return nil, nil, err
			}
			continue
		case err != nil:
			return nil, nil, err
		case !claimed:
			return nil, v, nil
		}
		l := &claimLease{b: b, e: e, v: v}
		switch err := l.ensureWindow(ctx); {
		case errors.Is(err, errFenceMoved):
			continue // the family moved while the store was slow: decide again
		case err != nil:
			return nil, nil, err
		}
		return l, nil, nil
	}
}

// errFenceMoved: the family changed since the lease's last write.
var errFenceMoved = errors.New("broker: the family changed since the claim")

// update writes the family with check-and-set on the lease's fence; the
// lease then holds the new version. A conflict means the claim is lost:
// errFenceMoved, with what replaced it cached.
func (l *claimLease) update(ctx context.Context, mutate func(fam *family.Record) (*family.Record, error)) error {
	v, err := l.b.updateFamily(ctx, l.e, l.v, func(cur *view) (*family.Record, error) {
		if cur != l.v {
			return nil, errFenceMoved
		}
		return mutate(cur.fam)
	})
	if err != nil {
		return err
	}
	l.v = v
	return nil
}

// markInDoubt records that the family's refresh token may have been rotated
// by a refresh whose answer was lost.
func (l *claimLease) markInDoubt(ctx context.Context) error {
	ctx, cancel := persistContext(ctx)
	defer cancel()
	err := l.update(ctx, (*family.Record).MarkedInDoubt)
	if errors.Is(err, errFenceMoved) {
		return fmt.Errorf("%w: the token family of %s changed during a refresh: %w", brokererr.ErrConflict, l.e.id, err)
	}
	return err
}

// errSlowClaim: the store accepted claim writes too late to leave the
// provider call its time.
var errSlowClaim = errors.New("broker: the store wrote the refresh claim too slowly")

// ensureWindow makes sure the lease leaves its provider calls at least half
// the time a claim means to give them. The deadline is chosen before the
// claim write, and a store that takes long to accept it (Vault retrying
// through an outage) eats into that time: then the provider call would fail
// for want of time, blamed on the provider. The claim is written once more,
// so its time starts after a write; if that write is slow too, the store is
// the trouble (STORE_UNAVAILABLE, the claim released).
func (l *claimLease) ensureWindow(ctx context.Context) error {
	b := l.b
	ttl := b.opts.ClaimTTLFor(l.v.cred.Spec)
	want := (ttl - b.opts.Claim.Margin) / 2
	for renewed := false; ; renewed = true {
		left := l.v.fam.Claim.Deadline.Sub(b.opts.Now()) - b.opts.Claim.Margin
		if left >= want {
			return nil
		}
		if renewed {
			l.release(ctx)
			return storeUnavailable(fmt.Errorf("%w: %s left of the claim for the provider call", errSlowClaim, left.Round(time.Millisecond)))
		}
		b.log.WarnContext(ctx, "the store took long to write a refresh claim; claiming again so the provider call gets its time", "credential", l.e.id, "left", left)
		err := l.update(ctx, func(f *family.Record) (*family.Record, error) {
			now := b.opts.Now()
			return f.ClaimedBy(b.opts.ReplicaID, now.Add(ttl), now)
		})
		if err != nil {
			return err
		}
	}
}

// release gives up the claim after a refresh that changed nothing at the
// provider (or may have: the family stays in doubt then), so others need
// not wait for the deadline.
func (l *claimLease) release(ctx context.Context) {
	holder := l.b.opts.ReplicaID
	if c := l.v.fam.Claim; c == nil || c.Holder != holder {
		return
	}
	ctx, cancel := persistContext(ctx)
	defer cancel()
	if err := l.update(ctx, func(f *family.Record) (*family.Record, error) { return f.Released(holder) }); err != nil {
		l.b.log.WarnContext(ctx, "could not release a refresh claim; others wait for its deadline", "credential", l.e.id, "err", err)
	}
}

// providerContext bounds provider calls to end claimMargin before the claim
// runs out.
func (b *Broker) providerContext(ctx context.Context, fam *family.Record) (context.Context, context.CancelFunc) {
	if fam.Claim == nil {
		return context.WithCancel(ctx)
	}
	return context.WithDeadline(ctx, fam.Claim.Deadline.Add(-b.opts.Claim.Margin))
}

// claimBase returns the view to decide a claim on: the cached family with a
// fresh credential record (optimistic), or both read from the store.
func (b *Broker) claimBase(ctx context.Context, e *entry, optimistic bool) (*view, error) {
	now := b.opts.Now()
	cached := e.view.Load()
	if !optimistic || cached == nil || cached.famVersion == 0 || cached.fam.Status != family.StatusActive ||
		(cached.fam.Claim != nil && cached.fam.Claim.Holder != b.opts.ReplicaID) {
		return b.readEntry(ctx, e)
	}
	// Credentials change rarely: one read per CredentialCacheTTL keeps other
	// replicas' updates arriving within it, without a read per rotation.
	if now.Sub(time.Unix(0, e.credReadAt.Load())) < family.CredentialCacheTTL {
		return cached, nil
	}
	return b.withFreshCredential(ctx, e, cached)
}

// withFreshCredential is cached's family with the credential record read
// now: the same incarnation proves the family's key current, and a write
// on the family's version proves the rest. A credential deleted and
// created again reads both records.
func (b *Broker) withFreshCredential(ctx context.Context, e *entry, cached *view) (*view, error) {
	cred, credVersion, err := registry.ReadCredential(ctx, b.store, e.id)
	if err != nil {
		return nil, err
	}
	e.credReadAt.Store(b.opts.Now().UnixNano())
	if cred.Incarnation != cached.cred.Incarnation {
		// Deleted and created again: the cached family is another
		// incarnation's; read the current one.
		return b.readEntry(ctx, e)
	}
	return b.newView(cred, credVersion, cached.fam, cached.famVersion), nil
}
