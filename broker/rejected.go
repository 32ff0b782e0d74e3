package broker

// RejectedOutcome is what a rejected-token report caused.
type RejectedOutcome int

const (
	// RejectedNone: the request reported no rejected token.
	RejectedNone RejectedOutcome = iota
	// RejectedStale: the report named a token that is not the current one;
	// it was ignored.
	RejectedStale
	// RejectedNoChange: the report named the current token, and the token
	// handed out is that same token (the provider vouched for it).
	RejectedNoChange
	// RejectedReplaced: the report named the current token, and a new one
	// replaced it.
	RejectedReplaced
)

// rejectionOutcome judges a report against the view it was made on
// (before) and the view answering it (after).
func rejectionOutcome(r *RejectedToken, before, after *view) RejectedOutcome {
	switch {
	case r == nil:
		return RejectedNone
	case before.fam.Status != StatusActive || before.fam.Access == nil || !r.names(before):
		return RejectedStale
	case after.fam.FamilyID == before.fam.FamilyID && after.fam.Generation == before.fam.Generation:
		return RejectedNoChange
	}
	return RejectedReplaced
}

// names reports whether r names v's current token.
func (r *RejectedToken) names(v *view) bool {
	if r.Fingerprint != "" {
		return r.Fingerprint == v.fam.Access.Fingerprint
	}
	return r.Generation == v.fam.Generation
}
