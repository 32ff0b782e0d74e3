package integration

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"
)

// secretSpellings are the ways a secret could reach a log line or a span,
// by encoding name: as it is, percent-encoded, in hex, and in base64 (std
// and URL alphabets). For base64 it gives the characters that depend on the
// secret's bytes only, at each of the three alignments the secret may have
// inside a longer encoded text (an "id:secret" Basic header, say), so a
// secret embedded in a bigger encoded value is found too.
func secretSpellings(secret string) map[string]string {
	m := map[string]string{
		"raw":           secret,
		"query-escaped": url.QueryEscape(secret),
		"path-escaped":  url.PathEscape(secret),
		"hex":           hex.EncodeToString([]byte(secret)),
		"HEX":           strings.ToUpper(hex.EncodeToString([]byte(secret))),
	}
	for k := range 3 {
		raw := append(make([]byte, k), secret...)
		enc := base64.StdEncoding.EncodeToString(raw)
		start, end := (k*8+5)/6, (k+len(secret))*8/6
		core := enc[start:end]
		m[fmt.Sprintf("base64 at offset %d", k)] = core
		m[fmt.Sprintf("base64url at offset %d", k)] = strings.NewReplacer("+", "-", "/", "_").Replace(core)
	}
	return m
}
