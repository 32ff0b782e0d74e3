// Package notice is what the rotation logic tells watchers and other
// replicas about a token family: the kinds of notices and the reasons they
// carry. The values are stored (family records, the notice log) and are
// metric labels, so they never change. Package broker re-exports every name.
package notice

// Kind says what happened to a family.
type Kind int

// Kinds of notices.
const (
	FamilyRevoked Kind = iota + 1
	FamilyActivated
	// AccessRotated is for replicas only, never delivered to watchers: the
	// family was rotated before its access token's cutoff, at a provider
	// that kills the previous access token (broker/cutoff.go).
	AccessRotated
	// CredentialCreated and CredentialDeleted are for replicas only: a
	// credential was created or deleted (whatever its family's state), so
	// that every replica's store keeps its listing of credentials current
	// without listing the whole folder again (store.Store.ListingHints).
	CredentialCreated
	CredentialDeleted
)

// ForWatchers reports whether watchers receive notices of kind k.
func (k Kind) ForWatchers() bool { return k == FamilyRevoked || k == FamilyActivated }

// RevocationReason says why a family was revoked. The values are stored
// (family records, the notice log) and are metric labels: they never
// change; the names say what they mean.
type RevocationReason string

const (
	// ReasonRefreshTokenRejected: the provider answered invalid_grant to a
	// refresh with no doubt about the token (theft, a legacy client, expiry,
	// a revocation at the provider).
	ReasonRefreshTokenRejected RevocationReason = "refresh_token_rejected"
	// ReasonLostRotation: invalid_grant after a refresh whose answer was
	// lost (in doubt): our own rotation, not theft.
	ReasonLostRotation RevocationReason = "lost_rotation"
	// ReasonAdminRevoked: RevokeCredential.
	ReasonAdminRevoked RevocationReason = "admin_revoked"
	// ReasonRevokedAtProvider: introspection found the refresh token
	// inactive before Rotavault presented it.
	ReasonRevokedAtProvider RevocationReason = "revoked_at_provider"
	// ReasonCredentialDeleted: DeleteCredential ended the family with its
	// credential (only in notices; the family record is gone). Its value is
	// "admin", the name it had before.
	ReasonCredentialDeleted RevocationReason = "admin"

	// Deprecated: ReasonAdmin is ReasonCredentialDeleted; the name said
	// less than it meant.
	ReasonAdmin = ReasonCredentialDeleted
	// Deprecated: ReasonClientRejected is never produced: a client the
	// provider refuses keeps its family (ErrClientRejected).
	ReasonClientRejected RevocationReason = "client_rejected"
	// Deprecated: ReasonSuperseded is never produced: a reauthentication
	// announces the new family (FamilyActivated) instead.
	ReasonSuperseded RevocationReason = "superseded"
)

// ProviderRevocation says whether the provider confirmed a revocation.
type ProviderRevocation int

const (
	// ProviderRevocationNone: Rotavault did not revoke at the provider.
	ProviderRevocationNone ProviderRevocation = iota
	ProviderRevocationConfirmed
	ProviderRevocationUnconfirmed
)
