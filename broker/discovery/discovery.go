// Package discovery keeps credentials' provider metadata current. A
// generic provider's credential may name its issuer instead of (or besides)
// its endpoint URLs: the metadata document (RFC 8414, else OpenID Connect
// discovery) is fetched when the credential is created or its issuer
// changes, and stored in the credential record (Spec.Discovered) so that
// every replica uses the same endpoints without fetching first. Each
// replica fetches the documents again every interval (one fetch per issuer
// per pass, however many credentials share it) and has the rotation core
// write a credential only when its document changed, so an unchanged
// provider costs no store write. A failed refetch keeps the stored
// metadata: endpoints rarely move, and a provider's metadata outage must
// not stop refreshes.
package discovery

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/stats"
	"github.com/rotavault/rotavault/provider"
)

// unavailableRetry is the RetryAfter of a discovery that could not reach
// the issuer: long enough for a restarting provider, short for a person.
const unavailableRetry = 5 * time.Second

// Credential is what a pass needs of one credential.
type Credential struct {
	ID, Issuer string
	Stored     *credspec.DiscoveredMetadata
}

// Core is what discovery needs of the rotation core.
type Core interface {
	// Credentials lists the credentials in memory.
	Credentials() []Credential
	// Store writes md into id's credential record, if the credential
	// still names issuer and its stored document differs.
	Store(ctx context.Context, id, issuer string, md *credspec.DiscoveredMetadata) error
}

// Discovery fetches issuers' metadata. Safe for concurrent use.
type Discovery struct {
	// d is nil when the provider client cannot discover.
	d      credspec.Discoverer
	now    func() time.Time
	counts *stats.Counters
	log    *slog.Logger
}

// New returns a Discovery fetching through p when it is a
// credspec.Discoverer, counting fetches in counts.
func New(p any, now func() time.Time, counts *stats.Counters, log *slog.Logger) *Discovery {
	d, _ := p.(credspec.Discoverer)
	return &Discovery{d: d, now: now, counts: counts, log: log}
}

// Discover fetches issuer's metadata, counting the fetch.
func (dy *Discovery) Discover(ctx context.Context, issuer string) (*credspec.DiscoveredMetadata, error) {
	if dy.d == nil {
		return nil, errors.New("broker: this server's provider client cannot discover metadata")
	}
	dy.counts.Discoveries.Add(1)
	m, err := dy.d.Discover(ctx, issuer)
	if err != nil {
		dy.counts.DiscoveryFailures.Add(1)
		return nil, err
	}
	return credspec.FromMetadata(m, dy.now()), nil
}

// Into sets spec.Discovered from spec.Issuer (clears it without one) and
// checks that a token endpoint results. A failed discovery is an
// *brokererr.UnavailableError (ComponentProvider) when the issuer could not
// be reached or answered "try later" — the same call may succeed later —
// and otherwise an *brokererr.InvalidArgumentError naming what failed: the
// issuer is wrong or its provider publishes no (acceptable) metadata.
func (dy *Discovery) Into(ctx context.Context, spec *credspec.Spec) error {
	spec.Discovered = nil
	if spec.Issuer == "" {
		return nil
	}
	md, err := dy.Discover(ctx, spec.Issuer)
	if errors.Is(err, provider.ErrDiscoveryUnavailable) {
		return &brokererr.UnavailableError{Component: brokererr.ComponentProvider, RetryAfter: unavailableRetry, Err: err}
	}
	if err != nil {
		return brokererr.Invalid("spec.issuer", "%v; check the issuer, or set the endpoint URLs instead", err)
	}
	spec.Discovered = md
	return nil
}

// Run refetches issuers' metadata every interval until ctx ends.
func (dy *Discovery) Run(ctx context.Context, interval time.Duration, core Core) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		dy.Pass(ctx, core)
	}
}

// Pass fetches each issuer in use once and stores changed documents.
func (dy *Discovery) Pass(ctx context.Context, core Core) {
	type result struct {
		md  *credspec.DiscoveredMetadata
		err error
	}
	fetched := make(map[string]result)
	for _, c := range core.Credentials() {
		if ctx.Err() != nil {
			return
		}
		if c.Issuer == "" {
			continue
		}
		r, ok := fetched[c.Issuer]
		if !ok {
			r.md, r.err = dy.Discover(ctx, c.Issuer)
			fetched[c.Issuer] = r
			if r.err != nil {
				dy.log.WarnContext(ctx, "could not fetch the provider's metadata again; keeping the stored endpoints", "issuer", c.Issuer, "err", r.err)
			}
		}
		if r.err != nil || credspec.SameDocument(c.Stored, r.md) {
			continue
		}
		if err := core.Store(ctx, c.ID, c.Issuer, r.md); err != nil {
			dy.log.WarnContext(ctx, "could not store the provider's changed metadata; the next pass will", "credential", c.ID, "err", err)
		}
	}
}
