package broker

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store"
)

// Provider metadata discovery. A generic provider's credential may name its
// issuer instead of (or besides) its endpoint URLs: the metadata document
// (RFC 8414, else OpenID Connect discovery) is fetched when the credential
// is created or its issuer changes, and stored in the credential record
// (Spec.Discovered) so that every replica uses the same endpoints without
// fetching first. Each replica fetches the documents again every
// discoveryInterval (one fetch per issuer per pass, however many credentials
// share it) and writes a credential only when its document changed, so an
// unchanged provider costs no store write. A failed refetch keeps the stored
// metadata: endpoints rarely move, and a provider's metadata outage must not
// stop refreshes.

// DefaultDiscoveryInterval is how often issuers' metadata is fetched again.
const DefaultDiscoveryInterval = time.Hour

// Discoverer fetches an issuer's metadata. *provider.Client implements it;
// New uses Config.Provider when it does.
type Discoverer interface {
	Discover(ctx context.Context, issuer string) (provider.Metadata, error)
}

// DiscoveredMetadata is what an issuer's metadata document said, as stored
// with the credential.
type DiscoveredMetadata struct {
	Issuer                 string `json:"issuer"`
	URL                    string `json:"url"`
	TokenURL               string `json:"token_url,omitempty"`
	AuthorizeURL           string `json:"authorize_url,omitempty"`
	RevocationURL          string `json:"revocation_url,omitempty"`
	IntrospectionURL       string `json:"introspection_url,omitempty"`
	DeviceAuthorizationURL string `json:"device_authorization_url,omitempty"`
	// TokenEndpointAuthMethods as published; nil when absent (RFC 8414:
	// client_secret_basic).
	TokenEndpointAuthMethods []string `json:"token_endpoint_auth_methods,omitempty"`
	// ClientAuth is the method chosen from them (Basic when listed).
	ClientAuth ClientAuthMethod `json:"client_auth_method,omitempty"`
	// FetchedAt is when this document was fetched; an unchanged document
	// fetched again is not written, so it is when it last changed.
	FetchedAt time.Time `json:"fetched_at"`
}

func (d DiscoveredMetadata) clone() DiscoveredMetadata {
	d.TokenEndpointAuthMethods = slices.Clone(d.TokenEndpointAuthMethods)
	return d
}

// sameDocument reports whether a and b say the same, whenever fetched.
func sameDocument(a, b *DiscoveredMetadata) bool {
	if a == nil || b == nil {
		return a == b
	}
	x, y := *a, *b
	x.FetchedAt, y.FetchedAt = time.Time{}, time.Time{}
	return reflect.DeepEqual(x, y)
}

func discovered(m provider.Metadata, now time.Time) *DiscoveredMetadata {
	return &DiscoveredMetadata{
		Issuer: m.Issuer, URL: m.URL,
		TokenURL: m.TokenEndpoint, AuthorizeURL: m.AuthorizationEndpoint,
		RevocationURL: m.RevocationEndpoint, IntrospectionURL: m.IntrospectionEndpoint,
		DeviceAuthorizationURL:   m.DeviceAuthorizationEndpoint,
		TokenEndpointAuthMethods: slices.Clone(m.TokenEndpointAuthMethods),
		ClientAuth:               ClientAuthMethod(m.AuthMethod()),
		FetchedAt:                now.UTC(),
	}
}

// discover fetches issuer's metadata, counting the fetch.
func (b *Broker) discover(ctx context.Context, issuer string) (*DiscoveredMetadata, error) {
	d, ok := b.provider.(Discoverer)
	if !ok {
		return nil, errors.New("broker: this server's provider client cannot discover metadata")
	}
	b.metrics.discoveries.Add(1)
	m, err := d.Discover(ctx, issuer)
	if err != nil {
		b.metrics.discoveryFailures.Add(1)
		return nil, err
	}
	return discovered(m, b.opts.now()), nil
}

// discoverInto sets spec.Discovered from spec.Issuer (clears it without
// one) and checks that a token endpoint results. A failed discovery is an
// *InvalidArgumentError naming what failed: the issuer is wrong, its
// provider publishes no (acceptable) metadata, or it is unreachable now.
func (b *Broker) discoverInto(ctx context.Context, spec *Spec) error {
	spec.Discovered = nil
	if spec.Issuer == "" {
		return nil
	}
	md, err := b.discover(ctx, spec.Issuer)
	if err != nil {
		return brokererr.Invalid("spec.issuer", "%v; check the issuer, or set the endpoint URLs instead", err)
	}
	spec.Discovered = md
	return nil
}

// startRediscovery refetches issuers' metadata every discoveryInterval
// until ctx ends, when enabled.
func (b *Broker) startRediscovery(ctx context.Context) {
	if b.opts.discoveryInterval <= 0 {
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		t := time.NewTicker(b.opts.discoveryInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			b.rediscover(ctx)
		}
	}()
}

// rediscover fetches each issuer in use once and stores changed documents.
func (b *Broker) rediscover(ctx context.Context) {
	type result struct {
		md  *DiscoveredMetadata
		err error
	}
	fetched := make(map[string]result)
	for _, e := range b.snapshotEntries() {
		if ctx.Err() != nil {
			return
		}
		v := e.view.Load()
		issuer := v.cred.Spec.Issuer
		if issuer == "" {
			continue
		}
		r, ok := fetched[issuer]
		if !ok {
			r.md, r.err = b.discover(ctx, issuer)
			fetched[issuer] = r
			if r.err != nil {
				b.log.WarnContext(ctx, "could not fetch the provider's metadata again; keeping the stored endpoints", "issuer", issuer, "err", r.err)
			}
		}
		if r.err != nil || sameDocument(v.cred.Spec.Discovered, r.md) {
			continue
		}
		if err := b.storeDiscovered(ctx, e, issuer, r.md); err != nil {
			b.log.WarnContext(ctx, "could not store the provider's changed metadata; the next pass will", "credential", e.id, "err", err)
		}
	}
}

// storeDiscovered writes md into e's credential record, if the credential
// still names issuer and its stored document differs.
func (b *Broker) storeDiscovered(ctx context.Context, e *entry, issuer string, md *DiscoveredMetadata) error {
	for {
		v, err := b.readView(ctx, e.id)
		if err != nil {
			return err
		}
		if v.cred.Spec.Issuer != issuer || sameDocument(v.cred.Spec.Discovered, md) {
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
