package broker

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/catalog"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/detect"
	"github.com/rotavault/rotavault/broker/notice"
	"github.com/rotavault/rotavault/store"
)

// Credential describes a credential; it never holds a secret.
type Credential struct {
	ID              string
	Spec            credspec.Spec // ClientSecret always empty
	HasClientSecret bool
	Status          Status
	FamilyID        string
	Generation      uint64
	RevokedReason   notice.RevocationReason
	LastRotationAt  time.Time
	NextRefreshAt   time.Time
	AccessExpiresAt time.Time
	AccessIssuedAt  time.Time
	// LastRefreshRotated: whether the last refresh rotated the refresh
	// token; nil before the first refresh.
	LastRefreshRotated *bool
	LastError          string
	CreatedAt          time.Time
	UpdatedAt          time.Time
	// EarlyDetection is whether the periodic introspection watches the
	// family now; EarlyDetectionDetail says why (not).
	EarlyDetection       detect.State
	EarlyDetectionDetail string
}

// CreateCredential registers a credential without a token family. Errors:
// *InvalidArgumentError, ErrAlreadyExists, *UnavailableError.
func (b *Broker) CreateCredential(ctx context.Context, id string, spec credspec.Spec) (Credential, error) {
	if err := b.validateID(id); err != nil {
		return Credential{}, err
	}
	spec.Discovered = nil // output only
	if err := spec.Validate(); err != nil {
		return Credential{}, err
	}
	if err := b.discovery.Into(ctx, &spec); err != nil {
		return Credential{}, err
	}
	if err := b.opts.CheckReuseGrace(spec); err != nil {
		return Credential{}, err
	}
	now := b.opts.Now().UTC()
	rec := &credentialRecord{Format: recordFormat, ID: id, Incarnation: randomHex(8), Spec: spec, CreatedAt: now, UpdatedAt: now}
	raw, err := encodeRecord(rec)
	if err != nil {
		return Credential{}, err
	}
	version, err := b.store.Put(ctx, credentialKey(id), raw, 0)
	if errors.Is(err, store.ErrConflict) {
		return Credential{}, fmt.Errorf("%w: %s", brokererr.ErrAlreadyExists, id)
	}
	if err != nil {
		return Credential{}, storeUnavailable(err)
	}
	fam := &familyRecord{Format: recordFormat, Status: StatusAwaitingReauth}
	v := b.newView(rec, version, fam, 0)
	e := &entry{id: id, wakes: &b.wakes}
	e.view.Store(v)
	b.entriesMu.Lock()
	b.entries[id] = e
	b.entriesMu.Unlock()
	b.audit(ctx, audit.Event{Action: audit.ActionCredentialCreated, Credential: id, Detail: "provider " + spec.ProviderKind.String()})
	return b.describe(e, v), nil
}

// UpdateCredential changes the named fields of a credential's spec, keeping
// its token family. Errors: *InvalidArgumentError, ErrNotFound,
// *UnavailableError.
func (b *Broker) UpdateCredential(ctx context.Context, id string, fields []credspec.Field, spec credspec.Spec) (Credential, error) {
	if err := b.validateID(id); err != nil {
		return Credential{}, err
	}
	if len(fields) == 0 {
		return Credential{}, brokererr.Invalid("update_mask", "name at least one field to change")
	}
	e, err := b.entry(ctx, id)
	if err != nil {
		return Credential{}, err
	}
	for {
		v, err := b.readView(ctx, id)
		if err != nil {
			return Credential{}, err
		}
		next := *v.cred
		next.Spec = v.cred.Spec
		next.Spec.Scopes = append([]string(nil), v.cred.Spec.Scopes...)
		for _, f := range fields {
			if err := credspec.Apply(&next.Spec, spec, f); err != nil {
				return Credential{}, err
			}
		}
		if err := next.Spec.Validate(); err != nil {
			return Credential{}, err
		}
		if next.Spec.Issuer != v.cred.Spec.Issuer {
			if err := b.discovery.Into(ctx, &next.Spec); err != nil {
				return Credential{}, err
			}
		}
		if err := b.opts.CheckReuseGrace(next.Spec); err != nil {
			return Credential{}, err
		}
		if reflect.DeepEqual(next.Spec, v.cred.Spec) {
			return b.describe(e, v), nil // nothing to change, nothing to write
		}
		next.UpdatedAt = b.opts.Now().UTC()
		next.Format = recordFormat
		raw, err := encodeRecord(&next)
		if err != nil {
			return Credential{}, err
		}
		version, err := b.store.Put(ctx, credentialKey(id), raw, v.credVersion)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return Credential{}, storeUnavailable(err)
		}
		nv := b.newView(&next, version, v.fam, v.famVersion)
		e.setView(nv)
		names := make([]string, len(fields))
		for i, f := range fields {
			names[i] = string(f)
		}
		b.audit(ctx, audit.Event{Action: audit.ActionCredentialUpdated, Credential: id, Detail: "fields: " + strings.Join(names, ",")})
		return b.describe(e, nv), nil
	}
}

// GetCredential describes a credential. Errors: *InvalidArgumentError,
// ErrNotFound, *UnavailableError.
func (b *Broker) GetCredential(ctx context.Context, id string) (Credential, error) {
	if err := b.validateID(id); err != nil {
		return Credential{}, err
	}
	e, err := b.entry(ctx, id)
	if err != nil {
		return Credential{}, err
	}
	return b.describe(e, e.view.Load()), nil
}

// ListCredentials lists up to limit credentials with ids after `after`, in
// id order, and whether more follow. A page costs the store one ListPage
// (limit keys, whatever the number of credentials) and, for credentials
// this replica has not loaded, their reads.
func (b *Broker) ListCredentials(ctx context.Context, after string, limit int) ([]Credential, bool, error) {
	if limit < 1 {
		return nil, false, brokererr.Invalid("page_size", "must be positive")
	}
	keys, more, err := b.store.ListPage(ctx, credentialsPrefix, credentialsPrefix+after, limit)
	if err != nil {
		return nil, false, storeUnavailable(err)
	}
	out := make([]Credential, 0, len(keys))
	for _, k := range keys {
		id := strings.TrimPrefix(k, credentialsPrefix)
		e, err := b.entry(ctx, id)
		if errors.Is(err, brokererr.ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, false, err
		}
		out = append(out, b.describe(e, e.view.Load()))
	}
	return out, more, nil
}

// DeleteCredential revokes the family at the provider (best effort: a
// provider that is down must not keep an admin from destroying secrets) and
// destroys the credential's records. Errors: *InvalidArgumentError,
// ErrNotFound, *UnavailableError.
func (b *Broker) DeleteCredential(ctx context.Context, id string) error {
	if err := b.validateID(id); err != nil {
		return err
	}
	v, err := b.readView(ctx, id)
	if err != nil {
		return err
	}
	if live := liveToken(v.fam); live != "" {
		rctx, cancel := context.WithTimeout(ctx, revokeTimeout)
		err := b.provider.Revoke(rctx, v.cred.Spec.Endpoint(), v.cred.Spec.ClientCredentials(), live)
		cancel()
		if err != nil {
			b.log.WarnContext(ctx, "could not revoke the family at the provider while deleting", "credential", id, "err", err)
		}
	}
	// The consumer catalog goes after the credential: see dropOrphanCatalog.
	for _, key := range []string{familyKey(v.cred), credentialKey(id), catalog.Key(id)} {
		if err := b.store.Delete(ctx, key); err != nil {
			return storeUnavailable(err)
		}
	}
	b.dropEntry(id)
	// Watchers of a live family hear that it ended; the audit record is
	// the deletion's.
	var n *notice.Notice
	if v.fam.Status == StatusActive {
		n = &notice.Notice{Kind: notice.FamilyRevoked, Reason: notice.ReasonCredentialDeleted, Detail: revocationDetail(notice.ReasonCredentialDeleted), DetectedAt: b.opts.Now()}
	}
	b.announce(ctx, id, v.fam, audit.Event{Action: audit.ActionCredentialDeleted}, n)
	return nil
}

func (b *Broker) describe(e *entry, v *view) Credential {
	c := Credential{
		ID:                 e.id,
		Spec:               v.cred.Spec.Redacted(),
		HasClientSecret:    v.cred.Spec.ClientSecret != "",
		Status:             v.fam.Status,
		FamilyID:           v.fam.FamilyID,
		Generation:         v.fam.Generation,
		RevokedReason:      v.fam.RevokedReason,
		LastRotationAt:     v.fam.LastRotationAt,
		LastRefreshRotated: v.fam.LastRefreshRotated,
		LastError:          v.fam.LastError,
		CreatedAt:          v.cred.CreatedAt,
		UpdatedAt:          v.cred.UpdatedAt,
	}
	if v.fam.Status == StatusActive {
		c.NextRefreshAt = v.nextRefreshAt
	}
	if v.fam.Unproven && v.fam.Status == StatusActive {
		c.Status = StatusUnproven
	}
	c.EarlyDetection, c.EarlyDetectionDetail = b.earlyDetection(v, b.opts.Now())
	if v.fam.Access != nil {
		c.AccessExpiresAt = v.fam.Access.ExpiresAt
		c.AccessIssuedAt = v.fam.Access.IssuedAt
	}
	e.mu.Lock()
	if e.lastErr != nil && c.LastError == "" {
		c.LastError = e.lastErr.Error()
	}
	if v.fam.PendingRevocation != "" {
		c.LastError = "revoked in Rotavault, but the provider has not confirmed revoking the refresh token; run RevokeCredential again or revoke it at the provider"
	}
	if e.rescue.Load() != nil {
		c.LastError = "a rotated refresh token is held in memory until the store accepts it"
	}
	e.mu.Unlock()
	return c
}
