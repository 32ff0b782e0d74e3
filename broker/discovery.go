package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
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

// discover fetches issuer's metadata, counting the fetch.
func (b *Broker) discover(ctx context.Context, issuer string) (*credspec.DiscoveredMetadata, error) {
	d, ok := b.provider.(credspec.Discoverer)
	if !ok {
		return nil, errors.New("broker: this server's provider client cannot discover metadata")
	}
	b.metrics.Discoveries.Add(1)
	m, err := d.Discover(ctx, issuer)
	if err != nil {
		b.metrics.DiscoveryFailures.Add(1)
		return nil, err
	}
	return credspec.FromMetadata(m, b.opts.Now()), nil
}

// discoverInto sets spec.Discovered from spec.Issuer (clears it without
// one) and checks that a token endpoint results. A failed discovery is an
// *InvalidArgumentError naming what failed: the issuer is wrong, its
// provider publishes no (acceptable) metadata, or it is unreachable now.
func (b *Broker) discoverInto(ctx context.Context, spec *credspec.Spec) error {
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
	if b.opts.DiscoveryInterval <= 0 {
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		t := time.NewTicker(b.opts.DiscoveryInterval)
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
		md  *credspec.DiscoveredMetadata
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
		if r.err != nil || credspec.SameDocument(v.cred.Spec.Discovered, r.md) {
			continue
		}
		if err := b.storeDiscovered(ctx, e, issuer, r.md); err != nil {
			b.log.WarnContext(ctx, "could not store the provider's changed metadata; the next pass will", "credential", e.id, "err", err)
		}
	}
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
