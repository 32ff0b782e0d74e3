// Package notice is what the rotation logic tells watchers and other
// replicas about a token family: the kinds of notices and the reasons they
// carry. The values are stored (family records, the notice log) and are
// metric labels, so they never change. Package broker re-exports every name.
package notice

import "encoding/json"

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

// Credential changes, the kinds earlier versions do not know, are written
// under AccessRotated's number with the change beside it (Notice's JSON).
const (
	changeCreated = "created"
	changeDeleted = "deleted"
)

// storedNotice is a Notice as the log stores it. Replicas of earlier
// versions deliver every kind to watchers but AccessRotated, and they follow
// the same log during a rolling upgrade: a CredentialCreated stored as
// kind 4 would reach their watchers as a family revoked. Stored as
// AccessRotated, it makes them re-read the credential instead (nothing for
// a creation, forgetting it for a deletion), which is harmless.
type storedNotice struct {
	noticeFields
	CredentialChange string `json:"credential_change,omitempty"`
}

// noticeFields is Notice without its JSON methods.
type noticeFields Notice

// MarshalJSON writes n as the log stores it (storedNotice).
func (n Notice) MarshalJSON() ([]byte, error) {
	s := storedNotice{noticeFields: noticeFields(n)}
	switch n.Kind {
	case CredentialCreated:
		s.Kind, s.CredentialChange = AccessRotated, changeCreated
	case CredentialDeleted:
		s.Kind, s.CredentialChange = AccessRotated, changeDeleted
	}
	return json.Marshal(s)
}

// UnmarshalJSON reads a notice as the log stores it (storedNotice).
func (n *Notice) UnmarshalJSON(raw []byte) error {
	var s storedNotice
	if err := json.Unmarshal(raw, &s); err != nil {
		return err
	}
	*n = Notice(s.noticeFields)
	if n.Kind == AccessRotated {
		switch s.CredentialChange {
		case changeCreated:
			n.Kind = CredentialCreated
		case changeDeleted:
			n.Kind = CredentialDeleted
		}
	}
	return nil
}
