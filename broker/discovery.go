package broker

import (
	"context"
	"errors"
	"fmt"

	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/discovery"
	"github.com/rotavault/rotavault/store"
)

// Provider metadata discovery is package discovery; the core lists its
// credentials for a pass and stores the documents that changed.

// startRediscovery refetches issuers' metadata every DiscoveryInterval
// until ctx ends, when enabled.
func (b *Broker) startRediscovery(ctx context.Context) {
	if b.opts.DiscoveryInterval <= 0 {
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		b.discovery.Run(ctx, b.opts.DiscoveryInterval, discoveryCore{b})
	}()
}

// discoveryCore answers discovery's questions about credentials.
type discoveryCore struct{ b *Broker }

var _ discovery.Core = discoveryCore{}

func (c discoveryCore) Credentials() []discovery.Credential {
	entries := c.b.snapshotEntries()
	out := make([]discovery.Credential, 0, len(entries))
	for _, e := range entries {
		spec := e.view.Load().cred.Spec
		out = append(out, discovery.Credential{ID: e.id, Issuer: spec.Issuer, Stored: spec.Discovered})
	}
	return out
}

func (c discoveryCore) Store(ctx context.Context, id, issuer string, md *credspec.DiscoveredMetadata) error {
	e, err := c.b.entry(ctx, id)
	if err != nil {
		return err
	}
	return c.b.storeDiscovered(ctx, e, issuer, md)
}

// storeDiscovered writes md into e's credential record, if the credential
// still names issuer and its stored document differs.
func (b *Broker) storeDiscovered(ctx context.Context, e *entry, issuer string, md *credspec.DiscoveredMetadata) error {
	for {
		v, err := b.readView(ctx, e.id)
		if err != nil {
			return err
		}
		if v.cred.Spec.Issuer != issuer || credspec.SameDocument(v.cred.Spec.Discovered, md) {
			return nil
		}
		next := *v.cred
		next.Spec.Discovered = md
		next.Format = recordFormat
		raw, err := encodeRecord(&next)
		if err != nil {
			return err
		}
		version, err := b.store.Put(ctx, credentialKey(e.id), raw, v.credVersion)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return fmt.Errorf("broker: storing discovered metadata: %w", storeUnavailable(err))
		}
		e.setView(b.newView(&next, version, v.fam, v.famVersion))
		b.log.InfoContext(ctx, "provider metadata changed; stored", "credential", e.id, "issuer", issuer, "url", md.URL)
		return nil
	}
}
