package broker

import (
	"context"

	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/discovery"
)

// Provider metadata discovery is package discovery; the core lists its
// credentials for a pass and stores the documents that changed.

// startRediscovery refetches issuers' metadata every DiscoveryInterval
// until ctx ends, when enabled.
func (b *Broker) startRediscovery(ctx context.Context) {
	if b.opts.DiscoveryInterval <= 0 {
		return
	}
	b.goTracked(func() { b.discovery.Run(ctx, b.opts.DiscoveryInterval, discoveryCore{b}) })
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
	return c.b.creds.StoreDiscovered(ctx, id, issuer, md)
}
