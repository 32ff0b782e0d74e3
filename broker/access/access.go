// Package access is what a consumer asks the rotation core for and what
// it gets: a token request, the report of a token a resource server
// refused, and the access token handed out.
package access

import (
	"crypto/sha256"
	"encoding/hex"
	"time"
)

// Request asks for an access token.
type Request struct {
	CredentialID string
	// MinRemaining is the least lifetime the token must have left; 0 means
	// any token not within the expiry delta of its end.
	MinRemaining time.Duration
	// Rejected, when set, names a token a resource server refused.
	Rejected *RejectedToken
}

// RejectedToken names a refused access token by generation (within the
// current family) or by fingerprint. Exactly one is set.
type RejectedToken struct {
	Generation  uint64
	Fingerprint string
}

// Token is what consumers receive. It never holds a refresh token.
type Token struct {
	Token       string
	Type        string
	InstanceURL string
	Scopes      []string
	IssuedAt    time.Time
	ExpiresAt   time.Time
	// UseUntil is when this token must stop being used: after it a replica
	// may have rotated it at a provider that kills the previous access token.
	UseUntil    time.Time
	FamilyID    string
	Generation  uint64
	Fingerprint string

	// Rejected says what the request's rejected-token report caused; zero
	// when the request reported none.
	Rejected RejectedOutcome
}

// Fingerprint identifies an access token without revealing it: lowercase hex
// of the first 8 bytes of its SHA-256.
func Fingerprint(accessToken string) string {
	sum := sha256.Sum256([]byte(accessToken))
	return hex.EncodeToString(sum[:8])
}

// IsFingerprint reports whether s has the form Fingerprint gives.
func IsFingerprint(s string) bool {
	if len(s) != 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !(s[i] >= '0' && s[i] <= '9' || s[i] >= 'a' && s[i] <= 'f') {
			return false
		}
	}
	return true
}

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
