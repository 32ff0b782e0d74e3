package family

import (
	"fmt"
	"time"

	"github.com/rotavault/rotavault/broker/notice"
)

// LiveToken is the refresh token of f that may still be live at the
// provider: an active family's, or a revoked one's pending revocation.
func (f *Record) LiveToken() string {
	switch f.Status {
	case StatusActive:
		return f.RefreshToken
	case StatusRevoked:
		return f.PendingRevocation
	}
	return ""
}

// Revocation is one family revocation, whatever its cause: reuse
// (invalid_grant), a deliberate RevokeCredential, or early detection.
type Revocation struct {
	Reason notice.RevocationReason
	// Detail is the record's last error.
	Detail string
	// AuditDetail is the audit record's detail (the provider's error, the
	// operator's reason, how it was detected).
	AuditDetail string
}

// Details are the notice's and the audit record's detail of r, for a
// credential whose reuse grace period is grace.
func (r Revocation) Details(grace time.Duration) (noticeDetail, auditDetail string) {
	noticeDetail, auditDetail = RevocationDetail(r.Reason), r.AuditDetail
	if r.Reason == notice.ReasonLostRotation {
		noticeDetail = LostRotationDetail(grace)
		auditDetail += "; " + noticeDetail
	}
	return noticeDetail, auditDetail
}

// RevocationDetail explains a reason in notices and records.
func RevocationDetail(r notice.RevocationReason) string {
	switch r {
	case notice.ReasonRefreshTokenRejected:
		return "the provider refused the refresh token: an old token of this family was reused elsewhere (theft or a legacy client), or it expired or was revoked at the provider"
	case notice.ReasonLostRotation:
		return "a refresh answer was lost after the provider rotated; with no reuse grace period the family is gone (not theft)"
	case notice.ReasonClientRejected:
		return "the provider refused the client (secret, user or org no longer valid)"
	case notice.ReasonCredentialDeleted:
		return "the credential was deleted"
	case notice.ReasonAdminRevoked:
		return "revoked deliberately by an operator or administrator (RevokeCredential)"
	case notice.ReasonSuperseded:
		return "replaced by a new family"
	case notice.ReasonRevokedAtProvider:
		return "the provider reports the refresh token inactive: the family was revoked there (an old token of it reused elsewhere, by theft or a legacy client, or revoked by an admin or user); detected by introspection, without presenting it"
	default:
		return ""
	}
}

// LostRotationDetail explains a lost rotation by the grace period
// configured: without one the retry is a reuse; with one, the retry came
// too late.
func LostRotationDetail(grace time.Duration) string {
	if grace <= 0 {
		return RevocationDetail(notice.ReasonLostRotation)
	}
	return fmt.Sprintf("a refresh answer was lost after the provider rotated; with a reuse grace period of %s the retry came too late or the provider refused it, and the family is gone (not theft)", grace)
}
