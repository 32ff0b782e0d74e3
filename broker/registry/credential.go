package registry

import (
	"time"

	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/detect"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/notice"
)

// Credential describes a credential; it never holds a secret.
type Credential struct {
	ID              string
	Spec            credspec.Spec // ClientSecret always empty
	HasClientSecret bool
	Status          family.Status
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

// Runtime is what a replica knows of a credential besides its records.
type Runtime struct {
	// NextRefreshAt is when the scheduler refreshes the family (zero:
	// never).
	NextRefreshAt time.Time
	// EarlyDetection and its detail: whether the periodic introspection
	// watches the family, and why (not).
	EarlyDetection       detect.State
	EarlyDetectionDetail string
	// LastErr is the replica's last refresh failure (nil: none).
	LastErr error
	// Held: a rotated refresh token waits in the replica's memory for the
	// store to accept it.
	Held bool
}

// Describe describes credential id from its records and what a replica
// knows of it. It never copies a secret.
func Describe(id string, cred *family.Credential, fam *family.Record, rt Runtime) Credential {
	c := Credential{
		ID:                 id,
		Spec:               cred.Spec.Redacted(),
		HasClientSecret:    cred.Spec.ClientSecret != "",
		Status:             fam.Status,
		FamilyID:           fam.FamilyID,
		Generation:         fam.Generation,
		RevokedReason:      fam.RevokedReason,
		LastRotationAt:     fam.LastRotationAt,
		LastRefreshRotated: fam.LastRefreshRotated,
		LastError:          fam.LastError,
		CreatedAt:          cred.CreatedAt,
		UpdatedAt:          cred.UpdatedAt,
	}
	if fam.Status == family.StatusActive {
		c.NextRefreshAt = rt.NextRefreshAt
	}
	if fam.Unproven && fam.Status == family.StatusActive {
		c.Status = family.StatusUnproven
	}
	c.EarlyDetection, c.EarlyDetectionDetail = rt.EarlyDetection, rt.EarlyDetectionDetail
	if fam.Access != nil {
		c.AccessExpiresAt = fam.Access.ExpiresAt
		c.AccessIssuedAt = fam.Access.IssuedAt
	}
	if rt.LastErr != nil && c.LastError == "" {
		c.LastError = rt.LastErr.Error()
	}
	if fam.PendingRevocation != "" {
		c.LastError = "revoked in Rotavault, but the provider has not confirmed revoking the refresh token; run RevokeCredential again or revoke it at the provider"
	}
	if rt.Held {
		c.LastError = "a rotated refresh token is held in memory until the store accepts it"
	}
	return c
}
