package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/rotavault/rotavault/store"
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

// claim marks a refresh in progress.
type claim struct {
	Holder   string    `json:"holder"`
	Deadline time.Time `json:"deadline"`
}

func newReplicaID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// acquire runs until this replica holds the claim on the family, or another
// replica's refresh produced a view that passes need. It returns the view
// to refresh from (holding the claim, done=false) or the adopted one
// (done=true).
func (b *Broker) acquire(ctx context.Context, e *entry, need func(*view) bool) (v *view, done bool, err error) {
	// The first attempt trusts the family state this replica last saw and
	// claims with check-and-set on its version: if another replica changed
	// the family since, the claim conflicts and the next attempt reads it.
	// That saves a Vault read per rotation on the common path.
	optimistic := true
	for {
		v, err := b.claimBase(ctx, e, optimistic)
		optimistic = false
		if err != nil {
			return nil, false, err
		}
		e.setView(v)
		if !need(v) {
			return v, true, nil
		}
		if v.fam.Status != StatusActive {
			return nil, false, reauthRequired(e.id, v.fam)
		}
		now := b.opts.now()
		if c := v.fam.Claim; c != nil && c.Holder != b.opts.replicaID && now.Before(c.Deadline) {
			// Another replica is refreshing: wait for its result rather than
			// present the same token a second time.
			if err := b.awaitChange(ctx, familyKey(v.cred), v.famVersion, c.Deadline); err != nil {
				return nil, false, err
			}
			continue
		}
		next := v.fam.clone()
		if c := v.fam.Claim; c != nil && c.Holder != b.opts.replicaID {
			// Taking over from a holder that died or stalled: it may have
			// presented the token already, so an invalid_grant now is a lost
			// rotation, not theft.
			next.InDoubt = true
			b.log.WarnContext(ctx, "taking over an expired refresh claim", "credential", e.id, "holder", c.Holder, "deadline", c.Deadline)
		}
		next.Claim = &claim{Holder: b.opts.replicaID, Deadline: now.Add(b.opts.claimTTL)}
		version, err := b.writeFamily(ctx, familyKey(v.cred), next, v.famVersion)
		if errors.Is(err, store.ErrConflict) {
			continue // somebody else moved first: look again
		}
		if err != nil {
			return nil, false, storeUnavailable(err)
		}
		return b.newView(v.cred, v.credVersion, next, version), false, nil
	}
}

// awaitChange polls the family record until its version moves past version
// or the claim deadline passes.
func (b *Broker) awaitChange(ctx context.Context, key string, version uint64, deadline time.Time) error {
	b.metrics.claimWaits.Add(1)
	t := time.NewTicker(b.opts.claimPoll)
	defer t.Stop()
	for {
		rec, err := b.store.Get(ctx, key)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return storeUnavailable(err)
		}
		if err != nil || rec.Version != version || !b.opts.now().Before(deadline) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("broker: waiting for another replica's refresh: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// release gives up a claim after a refresh that changed nothing at the
// provider (or may have: fam carries InDoubt then), so others need not wait
// for the deadline.
func (b *Broker) release(ctx context.Context, e *entry, key string, fam *familyRecord, version uint64) {
	if fam.Claim == nil || fam.Claim.Holder != b.opts.replicaID {
		return
	}
	next := fam.clone()
	next.Claim = nil
	ctx, cancel := persistContext(ctx)
	defer cancel()
	if _, err := b.writeFamily(ctx, key, next, version); err != nil {
		b.log.WarnContext(ctx, "could not release a refresh claim; others wait for its deadline", "credential", e.id, "err", err)
	}
}

// providerContext bounds provider calls to end claimMargin before the claim
// runs out.
func (b *Broker) providerContext(ctx context.Context, fam *familyRecord) (context.Context, context.CancelFunc) {
	if fam.Claim == nil {
		return context.WithCancel(ctx)
	}
	return context.WithDeadline(ctx, fam.Claim.Deadline.Add(-b.opts.claimMargin))
}

// claimBase returns the view to decide a claim on: the cached family with a
// fresh credential record (optimistic), or both read from the store.
func (b *Broker) claimBase(ctx context.Context, e *entry, optimistic bool) (*view, error) {
	now := b.opts.now()
	cached := e.view.Load()
	if !optimistic || cached == nil || cached.famVersion == 0 || cached.fam.Status != StatusActive ||
		(cached.fam.Claim != nil && cached.fam.Claim.Holder != b.opts.replicaID) {
		v, err := b.readView(ctx, e.id)
		if err == nil {
			e.credReadAt.Store(now.UnixNano())
		}
		return v, err
	}
	// Credentials change rarely: one read per credCacheTTL keeps other
	// replicas' updates arriving within it, without a read per rotation.
	if now.Sub(time.Unix(0, e.credReadAt.Load())) < credCacheTTL {
		return cached, nil
	}
	cred, credVersion, err := b.readCredential(ctx, e.id)
	if err != nil {
		return nil, err
	}
	e.credReadAt.Store(now.UnixNano())
	if cred.Incarnation != cached.cred.Incarnation {
		// Deleted and created again: the cached family is another
		// incarnation's; read the current one.
		return b.readView(ctx, e.id)
	}
	return b.newView(cred, credVersion, cached.fam, cached.famVersion), nil
}

// credCacheTTL bounds how long a replica refreshes with a credential record
// it has not re-read: another replica's update (a rotated client secret, a
// new endpoint) reaches it within this time, or at once when the provider
// refuses the client.
const credCacheTTL = 30 * time.Second
