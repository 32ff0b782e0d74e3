// Package family is a token family's life as data: the records the broker
// keeps in the store (their JSON is the stored format), the states a
// family can be in, the table of allowed transitions, the pure transition
// methods that compute the next record, and the pure decisions over
// records (what a provider's answer to a refresh means and what to do
// about it). It does no I/O: the broker's updateFamily writes what these
// methods return.
package family

import (
	"time"

	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/notice"
)

// Status is a credential's token-family status.
type Status string

const (
	StatusAwaitingReauth Status = "awaiting_reauthentication"
	StatusActive         Status = "active"
	StatusRevoked        Status = "revoked"
	// StatusUnproven is an imported refresh token stored but not yet proven
	// by a refresh (the provider could not be reached): the broker retries.
	// Described, never stored: the record says active and unproven.
	StatusUnproven Status = "unproven"
)

// CredentialCacheTTL bounds how long a replica refreshes with a credential
// record it has not re-read: another replica's update (a rotated client
// secret, a new endpoint) reaches it within this time, or at once when the
// provider refuses the client.
const CredentialCacheTTL = 30 * time.Second

// Credential is a credential as stored: its id, incarnation and spec.
type Credential struct {
	Format int    `json:"format"`
	ID     string `json:"id"`
	// Incarnation is random per creation of the id (see Credential.FamilyKey).
	Incarnation string        `json:"incarnation,omitempty"`
	Spec        credspec.Spec `json:"spec"`
	CreatedAt   time.Time     `json:"created_at"`
	UpdatedAt   time.Time     `json:"updated_at"`
}

// AccessToken is an access token with what the API returns about it.
type AccessToken struct {
	Token       string    `json:"token"`
	Type        string    `json:"type"`
	InstanceURL string    `json:"instance_url,omitempty"`
	Scopes      []string  `json:"scopes,omitempty"`
	IssuedAt    time.Time `json:"issued_at"`
	ExpiresAt   time.Time `json:"expires_at"`
	Fingerprint string    `json:"fingerprint"`
	// AliveUntil is when the token surely expires at the provider at the
	// earliest: its lifetime counted from when we asked for it, before the
	// provider issued it (ExpiresAt counts from the answer). Until then an
	// "inactive" from the provider means revoked, not expired. Zero in
	// records written before it existed.
	AliveUntil time.Time `json:"alive_at_provider_until,omitzero"`
}

// Record is the state of a credential's token family. The refresh
// token lives only here (and, briefly, in the memory of the refresh that
// obtained it).
type Record struct {
	Format       int          `json:"format"`
	Status       Status       `json:"status"`
	FamilyID     string       `json:"family_id,omitempty"`
	Generation   uint64       `json:"generation"`
	RefreshToken string       `json:"refresh_token,omitempty"`
	Access       *AccessToken `json:"access,omitempty"`
	StartedAt    time.Time    `json:"started_at,omitzero"`
	// LastRefreshAt is when the refresh token was last presented with
	// success: the provider's idle timer restarts then.
	LastRefreshAt  time.Time `json:"last_refresh_at,omitzero"`
	LastRotationAt time.Time `json:"last_rotation_at,omitzero"`
	// LastRefreshRotated says whether the last refresh rotated the token;
	// nil before the family's first refresh.
	LastRefreshRotated *bool `json:"last_refresh_rotated,omitempty"`
	// InDoubt is set while a refresh whose outcome is unknown (timeout,
	// reset after sending) may have rotated RefreshToken at the provider. An
	// invalid_grant that follows is a lost rotation, not theft.
	InDoubt bool `json:"in_doubt,omitempty"`
	// Unproven is set on an imported refresh token until a refresh proves
	// it (see StateUnproven).
	Unproven bool `json:"unproven,omitempty"`
	// Claim is set while a replica refreshes the family (see the broker's claim.go).
	Claim         *Claim                  `json:"claim,omitempty"`
	RevokedReason notice.RevocationReason `json:"revoked_reason,omitempty"`
	// PendingRevocation is the refresh token of a deliberately revoked
	// family whose revocation the provider has not confirmed. It is kept
	// only so RevokeCredential can retry at the revocation endpoint; it is
	// never presented to the token endpoint.
	PendingRevocation string    `json:"pending_revocation,omitempty"`
	RevokedAt         time.Time `json:"revoked_at,omitzero"`
	LastError         string    `json:"last_error,omitempty"`
	LastErrorAt       time.Time `json:"last_error_at,omitzero"`
	// PreviousAccess is what introspection right after a rotation found
	// the provider does with the previous access token (the broker's cutoff.go); empty
	// until known. Kept in the family, where every replica reads it.
	PreviousAccess credspec.PreviousAccess `json:"previous_access,omitempty"`
}

// Clone returns a deep copy of f: records are never modified in place.
func (f *Record) Clone() *Record {
	c := *f
	if f.Access != nil {
		a := *f.Access
		a.Scopes = append([]string(nil), f.Access.Scopes...)
		c.Access = &a
	}
	return &c
}

// Claim marks a refresh in progress.
type Claim struct {
	Holder   string    `json:"holder"`
	Deadline time.Time `json:"deadline"`
}

// CredentialKey is where credential id lives. Credential ids fit the
// store's key grammar by construction (credid is a subset of it).
func CredentialKey(id string) string { return CredentialsPrefix + id }

// FamilyKey is where c's family lives. It includes the
// credential's incarnation, so a credential deleted and created again gets a
// fresh key: store versions restart after a delete, and a replica holding a
// stale view of the old incarnation must meet a conflict, not a coincidental
// version match.
func (c *Credential) FamilyKey() string {
	if c.Incarnation == "" {
		return "families/" + c.ID
	}
	return "families/" + c.ID + "/" + c.Incarnation
}

// CredentialsPrefix starts every credential record's key.
const CredentialsPrefix = "credentials/"
