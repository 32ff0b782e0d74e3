package server

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// TokenSet verifies bearer tokens against their SHA-256 digests; the tokens
// themselves are never stored. Immutable once parsed.
type TokenSet struct {
	entries []tokenEntry
}

type tokenEntry struct {
	identity string
	digest   [sha256.Size]byte
}

// ParseTokens parses lines of "<identity> <sha256-hex-of-token>"; blank
// lines and lines starting with # are skipped. Errors name the line, never
// its content beyond the identity.
func ParseTokens(data []byte) (*TokenSet, error) {
	ts := &TokenSet{}
	seen := make(map[[sha256.Size]byte]bool)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			return nil, fmt.Errorf("tokens line %d: want \"<identity> <sha256-hex-of-token>\"", n)
		}
		if err := CheckBearerIdentity(fields[0]); err != nil {
			return nil, fmt.Errorf("tokens line %d (%s): %w", n, fields[0], err)
		}
		raw, err := hex.DecodeString(fields[1])
		if err != nil || len(raw) != sha256.Size {
			return nil, fmt.Errorf("tokens line %d (%s): the digest must be 64 hex digits (sha256 of the token)", n, fields[0])
		}
		var d [sha256.Size]byte
		copy(d[:], raw)
		if seen[d] {
			// One token for two identities would make the caller ambiguous.
			return nil, fmt.Errorf("tokens line %d (%s): the same token digest appears twice", n, fields[0])
		}
		seen[d] = true
		ts.entries = append(ts.entries, tokenEntry{identity: fields[0], digest: d})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read tokens: %w", err)
	}
	return ts, nil
}

// CheckBearerIdentity refuses a bearer identity that could pass for a
// certificate's: one with a ":" that is not an absolute URI ("cn:admin",
// "dns:ops.example.org"). A URI such as a SPIFFE ID names the same
// identity whether a token or a certificate proves it. A tokens file
// naming one does not load; `rotavault bearer-line` refuses to print it.
func CheckBearerIdentity(id string) error {
	if !strings.Contains(id, ":") {
		return nil
	}
	if u, err := url.Parse(id); err == nil && u.Scheme != "" && u.Host != "" {
		return checkURIIdentity(u)
	}
	return errors.New("a bearer identity with \":\" must be an absolute URI (scheme://...); cn: and dns: name certificates")
}

// LoadTokensFile reads and parses a tokens file.
func LoadTokensFile(path string) (*TokenSet, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read tokens: %w", err)
	}
	ts, err := ParseTokens(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ts, nil
}

// VerifyToken returns the identity the token belongs to. Every entry is
// compared, in constant time, so the timing says nothing about which entry
// (if any) matched.
func (ts *TokenSet) VerifyToken(token string) (string, bool) {
	if ts == nil || token == "" {
		return "", false
	}
	d := sha256.Sum256([]byte(token))
	identity := ""
	for _, e := range ts.entries {
		if subtle.ConstantTimeCompare(d[:], e.digest[:]) == 1 {
			identity = e.identity
		}
	}
	return identity, identity != ""
}

// TokenDigest is the tokens-file form of a token: its SHA-256, in hex.
func TokenDigest(token string) string {
	d := sha256.Sum256([]byte(token))
	return hex.EncodeToString(d[:])
}
