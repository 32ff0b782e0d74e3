package provider

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
)

// NewPKCE returns a fresh RFC 7636 code verifier (32 random bytes,
// base64url: 43 characters) and its S256 challenge. The verifier is a secret
// until the code is exchanged: keep it out of logs. Safe for concurrent use.
func NewPKCE() (verifier, challenge string) {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails: crypto/rand aborts the program instead
	verifier = base64.RawURLEncoding.EncodeToString(b[:])
	return verifier, s256Challenge(verifier)
}

// s256Challenge is BASE64URL(SHA256(ASCII(verifier))) without padding.
func s256Challenge(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// validPKCEValue reports whether s is a verifier or challenge of RFC 7636's
// grammar: 43 to 128 characters of [A-Za-z0-9-._~].
func validPKCEValue(s string) bool {
	if len(s) < 43 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '-' || c == '.' || c == '_' || c == '~'
		if !ok {
			return false
		}
	}
	return true
}
