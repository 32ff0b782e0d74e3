package broker

import (
	"context"
	"errors"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/notice"
	"github.com/rotavault/rotavault/broker/registry"
)

// Credential administration is package registry; the core answers what a
// replica holds of a credential, describes it, and ends its family when it
// is deleted.

// Credentials returns the broker's credential registry.
func (b *Broker) Credentials() *registry.Credentials { return b.creds }

func (b *Broker) newRegistry() *registry.Credentials {
	return registry.New(registry.Config{Store: b.store, Core: registryCore{b}, Discover: b.discovery.Into, Check: b.opts.CheckReuseGrace,
		Now: b.opts.Now, Incarnation: func() string { return family.RandomID(8) }, Announce: func(ctx context.Context, n notice.Notice) { b.notify(ctx, n)() }, Logger: b.log})
}

// registryCore is the rotation core as the registry sees it.
type registryCore struct{ b *Broker }

var _ registry.Core = registryCore{}

func (c registryCore) Read(ctx context.Context, id string) (registry.Records, error) {
	v, err := c.b.readView(ctx, id)
	if err != nil {
		return registry.Records{}, err
	}
	return registry.Records{ID: id, Cred: v.cred, CredVersion: v.credVersion, Fam: v.fam, FamVersion: v.famVersion}, nil
}

// Describe with fromStore reads the store first: a family that is not
// active announces no notice when another replica deletes or changes its
// credential, so this replica's view alone could describe what is gone.
func (c registryCore) Describe(ctx context.Context, id string, fromStore bool) (registry.Credential, error) {
	c.b.entriesMu.RLock()
	e, loaded := c.b.entries[id]
	c.b.entriesMu.RUnlock()
	if fromStore && loaded { // one not loaded yet is read from the store below
		v, err := c.b.readView(ctx, id)
		if errors.Is(err, brokererr.ErrNotFound) {
			c.b.dropEntry(id)
		}
		if err != nil {
			return registry.Credential{}, err
		}
		e.setView(v) // keeps what is newer
	}
	e, err := c.b.entry(ctx, id)
	if err != nil {
		return registry.Credential{}, err
	}
	return c.b.describe(e, e.view.Load()), nil
}

func (c registryCore) Created(cred *family.Credential, version uint64) registry.Credential {
	fam := &family.Record{Format: recordFormat, Status: family.StatusAwaitingReauth}
	v := c.b.newView(cred, version, fam, 0)
	e := &entry{id: cred.ID, wakes: &c.b.wakes}
	e.view.Store(v)
	c.b.entriesMu.Lock()
	c.b.entries[cred.ID] = e
	c.b.entriesMu.Unlock()
	return c.b.describe(e, v)
}

func (c registryCore) Updated(ctx context.Context, r registry.Records, cred *family.Credential, version uint64) (registry.Credential, error) {
	e, err := c.b.entry(ctx, r.ID)
	if err != nil {
		return registry.Credential{}, err
	}
	if version == 0 {
		return c.b.describe(e, c.b.newView(r.Cred, r.CredVersion, r.Fam, r.FamVersion)), nil
	}
	v := c.b.newView(cred, version, r.Fam, r.FamVersion)
	e.setView(v)
	return c.b.describe(e, v), nil
}

func (c registryCore) RevokeAtProvider(ctx context.Context, r registry.Records) {
	if live := r.Fam.LiveToken(); live != "" {
		rctx, cancel := context.WithTimeout(ctx, revokeTimeout)
		err := c.b.provider.Revoke(rctx, r.Cred.Spec.Endpoint(), r.Cred.Spec.ClientCredentials(), live)
		cancel()
		if err != nil {
			c.b.log.WarnContext(ctx, "could not revoke the family at the provider while deleting", "credential", r.ID, "err", err)
		}
	}
}

func (c registryCore) Deleted(ctx context.Context, id string, fam *family.Record) {
	c.b.dropEntry(id)
	// Watchers of a live family hear that it ended; the audit record is
	// the deletion's.
	var n *notice.Notice
	if fam.Status == family.StatusActive {
		n = &notice.Notice{Kind: notice.FamilyRevoked, Reason: notice.ReasonCredentialDeleted, Detail: family.RevocationDetail(notice.ReasonCredentialDeleted), DetectedAt: c.b.opts.Now()}
	}
	c.b.announce(ctx, id, fam, audit.Event{Action: audit.ActionCredentialDeleted}, n)
}

func (c registryCore) Audit(ctx context.Context, e audit.Event) { c.b.audit(ctx, e) }

// describe describes v as this replica holds it.
func (b *Broker) describe(e *entry, v *view) registry.Credential {
	rt := registry.Runtime{NextRefreshAt: v.nextRefreshAt, Held: e.rescue.Load() != nil}
	rt.EarlyDetection, rt.EarlyDetectionDetail = detectFamily(e, v).Describe(b.opts.Detect.Interval, v.fam.Status == family.StatusActive, b.opts.Now())
	e.mu.Lock()
	rt.LastErr = e.lastErr
	e.mu.Unlock()
	return registry.Describe(e.id, v.cred, v.fam, rt)
}
