// Package registry is credential administration: creating, changing,
// describing, listing and deleting credentials, and storing the provider
// metadata discovery found. It writes credential records only (a family
// record has one writer, the rotation core's updateFamily) and reaches the
// core through Core: what a replica holds of a credential, its
// description, the end of its family on deletion.
//
// Safe for concurrent use.
package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/catalog"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/internal/jsonrec"
	"github.com/rotavault/rotavault/broker/notice"
	"github.com/rotavault/rotavault/store"
)

// Records are a credential's records as read from the store, with their
// versions (0: no family record yet).
type Records struct {
	ID          string
	Cred        *family.Credential
	CredVersion uint64
	Fam         *family.Record
	FamVersion  uint64
}

// Core is the rotation core as the registry sees it.
type Core interface {
	// Read reads id's records from the store, past any cache. Errors:
	// brokererr.ErrNotFound, *brokererr.UnavailableError.
	Read(ctx context.Context, id string) (Records, error)
	// Describe describes id as this replica holds it, loading it on first
	// use; with fromStore as the store holds it now (a credential deleted
	// or changed by another replica is forgotten or updated here). Errors:
	// Read's.
	Describe(ctx context.Context, id string, fromStore bool) (Credential, error)
	// Created makes a credential just stored, without a family, this
	// replica's, and describes it.
	Created(cred *family.Credential, version uint64) Credential
	// Updated makes cred, stored at version over r (as read), this
	// replica's view of the credential and describes it; with version 0
	// nothing was stored and r is described as it is. Errors: Read's.
	Updated(ctx context.Context, r Records, cred *family.Credential, version uint64) (Credential, error)
	// RevokeAtProvider revokes r's family's live token at the provider,
	// best effort (deletion must not wait for a provider that is down).
	RevokeAtProvider(ctx context.Context, r Records)
	// Deleted forgets a deleted credential and announces the end of fam.
	Deleted(ctx context.Context, id string, fam *family.Record)
	// Audit records e (time and actor filled in).
	Audit(ctx context.Context, e audit.Event)
}

// Config holds the registry's dependencies.
type Config struct {
	Store store.Store
	Core  Core
	// Discover fills a spec's provider metadata from its issuer, when it
	// names one (discovery.Discovery.Into).
	Discover func(ctx context.Context, spec *credspec.Spec) error
	// Check refuses a spec the server's options cannot serve
	// (option.Options.CheckReuseGrace).
	Check func(spec credspec.Spec) error
	Now   func() time.Time
	// Incarnation returns a fresh random incarnation for a created id.
	Incarnation func() string
	// Announce, when set, logs a notice for the other replicas (the
	// broker's notify): on a store that takes listing hints
	// (store.Store.ListingHints), every creation and deletion of a
	// credential is announced, and the store is told of those other
	// replicas announce (Remote), so that its listing of credentials stays
	// current without listing them all again.
	Announce func(ctx context.Context, n notice.Notice)
	// Logger is required.
	Logger *slog.Logger
}

// Credentials administers the credentials. Create it with New.
type Credentials struct {
	cfg   Config
	store store.Store
	core  Core
	log   *slog.Logger
	// hint tells the store of another replica's creation or deletion of a
	// credential record; nil without Config.Announce or when the store
	// takes no hints (nothing is announced then).
	hint func(key string, present bool)
}

// New returns the registry. With Config.Announce it declares the
// credentials' folder hinted (store.Store.ListingHints) before anything
// lists it.
func New(cfg Config) *Credentials {
	c := &Credentials{cfg: cfg, store: cfg.Store, core: cfg.Core, log: cfg.Logger}
	if cfg.Announce != nil {
		c.hint = cfg.Store.ListingHints(family.CredentialsPrefix)
	}
	return c
}

// announce tells the other replicas that id was created or deleted (kind).
func (c *Credentials) announce(ctx context.Context, id string, kind notice.Kind) {
	if c.hint != nil {
		c.cfg.Announce(ctx, notice.Notice{CredentialID: id, Kind: kind, DetectedAt: c.cfg.Now()})
	}
}

// Remote passes another replica's notice of a created or deleted
// credential on to the store as a hint. A deletion is hinted only once the
// record is seen gone: a credential deleted on one replica and created
// again on another may have its two notices logged in either order, and a
// listing missing a credential that exists would hide it until the store's
// next LIST. A creation hinted after a later deletion only leaves a key
// whose record is gone, which List skips.
func (c *Credentials) Remote(ctx context.Context, n notice.Notice) {
	if c.hint == nil {
		return
	}
	key := family.CredentialKey(n.CredentialID)
	switch n.Kind {
	case notice.CredentialCreated:
		c.hint(key, true)
	case notice.CredentialDeleted:
		_, err := c.store.Get(ctx, key)
		if errors.Is(err, store.ErrNotFound) {
			c.hint(key, false)
		} else if err != nil {
			c.log.WarnContext(ctx, "could not check a credential another replica deleted; other replicas' listings may show it until the store lists them again", "credential", n.CredentialID, "err", err)
		}
	}
}

// Create registers a credential without a token family. Errors:
// *InvalidArgumentError, ErrAlreadyExists, *UnavailableError.
func (c *Credentials) Create(ctx context.Context, id string, spec credspec.Spec) (Credential, error) {
	if err := credspec.ValidateID(id); err != nil {
		return Credential{}, err
	}
	spec.Discovered = nil // output only
	if err := spec.Validate(); err != nil {
		return Credential{}, err
	}
	if err := c.cfg.Discover(ctx, &spec); err != nil {
		return Credential{}, err
	}
	if err := c.cfg.Check(spec); err != nil {
		return Credential{}, err
	}
	now := c.cfg.Now().UTC()
	rec := &family.Credential{Format: jsonrec.Format, ID: id, Incarnation: c.cfg.Incarnation(), Spec: spec, CreatedAt: now, UpdatedAt: now}
	raw, err := jsonrec.Encode(rec)
	if err != nil {
		return Credential{}, err
	}
	version, err := c.store.Put(ctx, family.CredentialKey(id), raw, 0)
	if errors.Is(err, store.ErrConflict) {
		return Credential{}, fmt.Errorf("%w: %s", brokererr.ErrAlreadyExists, id)
	}
	if err != nil {
		return Credential{}, brokererr.StoreUnavailable(err)
	}
	desc := c.core.Created(rec, version)
	c.announce(ctx, id, notice.CredentialCreated)
	c.core.Audit(ctx, audit.Event{Action: audit.ActionCredentialCreated, Credential: id, Detail: "provider " + spec.ProviderKind.String()})
	return desc, nil
}

// Update changes the named fields of a credential's spec, keeping
// its token family. Errors: *InvalidArgumentError, ErrNotFound,
// *UnavailableError.
func (c *Credentials) Update(ctx context.Context, id string, fields []credspec.Field, spec credspec.Spec) (Credential, error) {
	if err := credspec.ValidateID(id); err != nil {
		return Credential{}, err
	}
	if len(fields) == 0 {
		return Credential{}, brokererr.Invalid("update_mask", "name at least one field to change")
	}
	for {
		r, err := c.core.Read(ctx, id)
		if err != nil {
			return Credential{}, err
		}
		next := *r.Cred
		next.Spec = r.Cred.Spec
		next.Spec.Scopes = append([]string(nil), r.Cred.Spec.Scopes...)
		for _, f := range fields {
			if err := credspec.Apply(&next.Spec, spec, f); err != nil {
				return Credential{}, err
			}
		}
		if err := next.Spec.Validate(); err != nil {
			return Credential{}, err
		}
		if next.Spec.Issuer != r.Cred.Spec.Issuer {
			if err := c.cfg.Discover(ctx, &next.Spec); err != nil {
				return Credential{}, err
			}
		}
		if err := c.cfg.Check(next.Spec); err != nil {
			return Credential{}, err
		}
		if reflect.DeepEqual(next.Spec, r.Cred.Spec) {
			return c.core.Updated(ctx, r, nil, 0) // nothing to change, nothing to write
		}
		next.UpdatedAt = c.cfg.Now().UTC()
		next.Format = jsonrec.Format
		raw, err := jsonrec.Encode(&next)
		if err != nil {
			return Credential{}, err
		}
		version, err := c.store.Put(ctx, family.CredentialKey(id), raw, r.CredVersion)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return Credential{}, brokererr.StoreUnavailable(err)
		}
		desc, err := c.core.Updated(ctx, r, &next, version)
		if err != nil {
			return Credential{}, err
		}
		names := make([]string, len(fields))
		for i, f := range fields {
			names[i] = string(f)
		}
		c.core.Audit(ctx, audit.Event{Action: audit.ActionCredentialUpdated, Credential: id, Detail: "fields: " + strings.Join(names, ",")})
		return desc, nil
	}
}

// Get describes a credential as the store holds it now (two store reads),
// whichever replica changed it last. Errors: *InvalidArgumentError,
// ErrNotFound, *UnavailableError.
func (c *Credentials) Get(ctx context.Context, id string) (Credential, error) {
	if err := credspec.ValidateID(id); err != nil {
		return Credential{}, err
	}
	return c.core.Describe(ctx, id, true)
}

// List lists up to limit credentials with ids after `after`, in
// id order, and whether more follow. A page costs the store one ListPage
// (limit keys, whatever the number of credentials) and, for credentials
// this replica has not loaded, their reads.
func (c *Credentials) List(ctx context.Context, after string, limit int) ([]Credential, bool, error) {
	if limit < 1 {
		return nil, false, brokererr.Invalid("page_size", "must be positive")
	}
	keys, more, err := c.store.ListPage(ctx, family.CredentialsPrefix, family.CredentialsPrefix+after, limit)
	if err != nil {
		return nil, false, brokererr.StoreUnavailable(err)
	}
	out := make([]Credential, 0, len(keys))
	for _, k := range keys {
		id := strings.TrimPrefix(k, family.CredentialsPrefix)
		desc, err := c.core.Describe(ctx, id, false)
		if errors.Is(err, brokererr.ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, false, err
		}
		out = append(out, desc)
	}
	return out, more, nil
}

// Delete revokes the family at the provider (best effort: a
// provider that is down must not keep an admin from destroying secrets) and
// destroys the credential's records. Errors: *InvalidArgumentError,
// ErrNotFound, *UnavailableError.
func (c *Credentials) Delete(ctx context.Context, id string) error {
	if err := credspec.ValidateID(id); err != nil {
		return err
	}
	r, err := c.core.Read(ctx, id)
	if err != nil {
		return err
	}
	c.core.RevokeAtProvider(ctx, r)
	// The consumer catalog goes after the credential: see dropOrphanCatalog.
	for _, key := range []string{r.Cred.FamilyKey(), family.CredentialKey(id), catalog.Key(id)} {
		if err := c.store.Delete(ctx, key); err != nil {
			return brokererr.StoreUnavailable(err)
		}
	}
	c.announce(ctx, id, notice.CredentialDeleted)
	c.core.Deleted(ctx, id, r.Fam)
	return nil
}

// StoreDiscovered writes md into id's credential record, if the credential
// still names issuer and its stored document differs.
func (c *Credentials) StoreDiscovered(ctx context.Context, id, issuer string, md *credspec.DiscoveredMetadata) error {
	for {
		r, err := c.core.Read(ctx, id)
		if err != nil {
			return err
		}
		if r.Cred.Spec.Issuer != issuer || credspec.SameDocument(r.Cred.Spec.Discovered, md) {
			return nil
		}
		next := *r.Cred
		next.Spec.Discovered = md
		next.Format = jsonrec.Format
		raw, err := jsonrec.Encode(&next)
		if err != nil {
			return err
		}
		version, err := c.store.Put(ctx, family.CredentialKey(id), raw, r.CredVersion)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return fmt.Errorf("broker: storing discovered metadata: %w", brokererr.StoreUnavailable(err))
		}
		if _, err := c.core.Updated(ctx, r, &next, version); err != nil {
			return err
		}
		c.log.InfoContext(ctx, "provider metadata changed; stored", "credential", id, "issuer", issuer, "url", md.URL)
		return nil
	}
}

// censusPage is how many credentials Count reads per page.
const censusPage = 1000

// Count counts the credentials by status, every Status present
// (0 where none has it), for the status RPC and the credentials gauge.
// It reads what List reads: the store's keys a page at a time
// and each credential's cached view. Errors: List's (the store
// unreachable).
func (c *Credentials) Count(ctx context.Context) (map[family.Status]int, error) {
	counts := map[family.Status]int{family.StatusActive: 0, family.StatusRevoked: 0, family.StatusAwaitingReauth: 0, family.StatusUnproven: 0}
	after := ""
	for {
		page, more, err := c.List(ctx, after, censusPage)
		if err != nil {
			return nil, fmt.Errorf("broker: count credentials: %w", err)
		}
		for _, cred := range page {
			counts[cred.Status]++
		}
		if !more || len(page) == 0 {
			return counts, nil
		}
		after = page[len(page)-1].ID
	}
}
