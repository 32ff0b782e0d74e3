package broker

import (
	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/family"
)

// rejectionOutcome judges a report against the view it was made on
// (before) and the view answering it (after).
func rejectionOutcome(r *access.RejectedToken, before, after *view) access.RejectedOutcome {
	switch {
	case r == nil:
		return access.RejectedNone
	case before.fam.Status != family.StatusActive || before.fam.Access == nil || !names(r, before):
		return access.RejectedStale
	case after.fam.FamilyID == before.fam.FamilyID && after.fam.Generation == before.fam.Generation:
		return access.RejectedNoChange
	}
	return access.RejectedReplaced
}

// names reports whether r names v's current token.
func names(r *access.RejectedToken, v *view) bool {
	if r.Fingerprint != "" {
		return r.Fingerprint == v.fam.Access.Fingerprint
	}
	return r.Generation == v.fam.Generation
}
