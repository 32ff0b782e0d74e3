package provider

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestS256ChallengeRFC7636Vector(t *testing.T) {
	// RFC 7636 appendix B.
	const verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
	const want = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
	if got := s256Challenge(verifier); got != want {
		t.Errorf("s256Challenge = %q, want %q", got, want)
	}
}

func TestNewPKCE(t *testing.T) {
	seen := map[string]bool{}
	for range 50 {
		v, c := NewPKCE()
		if len(v) != 43 || !validPKCEValue(v) {
			t.Fatalf("verifier %q is not 43 characters of the RFC 7636 alphabet", v)
		}
		if c != s256Challenge(v) || !validPKCEValue(c) {
			t.Fatalf("challenge %q does not match verifier", c)
		}
		if seen[v] {
			t.Fatalf("verifier repeated")
		}
		seen[v] = true
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"-3", 0},
		{" 12 ", 12 * time.Second},
		{"99999999999999999", maxRetryAfter},
		{now.Add(2 * time.Minute).Format(http.TimeFormat), 2 * time.Minute},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{now.Add(1000 * time.Hour).Format(http.TimeFormat), maxRetryAfter},
		{"soon", 0},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := parseRetryAfter(tt.in, now); got != tt.want {
				t.Errorf("parseRetryAfter(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestSanitize(t *testing.T) {
	tests := []struct {
		name, in, want string
		secrets        []string
	}{
		{"plain", "expired access/refresh token", "expired access/refresh token", nil},
		{"secret redacted", "token abc123 is invalid", "token [REDACTED] is invalid", []string{"abc123", ""}},
		{"control characters", "a\nb\tc\x00d\u2028e", "a b c d e", nil},
		{"invalid UTF-8", "a\xffb", "a\uFFFDb", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sanitize(tt.in, maxDescriptionRunes, newRedactor(tt.secrets)); got != tt.want {
				t.Errorf("sanitize(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
	t.Run("base64 of a text holding the secret, at each alignment", func(t *testing.T) {
		const secret = "s3cr/t+value"
		for pad := range 3 {
			text := strings.Repeat("x", pad) + "[" + secret + "]"
			for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawURLEncoding} {
				in := "got Basic " + enc.EncodeToString([]byte(text)) + ", refused"
				if got := sanitize(in, maxDescriptionRunes, newRedactor([]string{secret})); got != "got Basic [REDACTED], refused" {
					t.Errorf("sanitize(%q) = %q, want the whole base64 run redacted", in, got)
				}
			}
		}
	})
	t.Run("spellings mixed in one text, unrelated text kept", func(t *testing.T) {
		const secret = "a%2Fb/c d"
		in := `raw a%2Fb/c d, form a%252Fb%2Fc+d, path a%252Fb%2fc%20d, json a%2Fb\/c d, ascii a%2Fb\u002Fc\u0020d; a%2Fb/c e`
		want := `raw [REDACTED], form [REDACTED], path [REDACTED], json [REDACTED], ascii [REDACTED]; a%2Fb/c e`
		if got := sanitize(in, maxDescriptionRunes, newRedactor([]string{secret})); got != want {
			t.Errorf("sanitize(%q) =\n%q, want\n%q", in, got, want)
		}
	})
	t.Run("a spelling longer than the scanned text is redacted to its end", func(t *testing.T) {
		secret := strings.Repeat("5Aep861x", 512) // a 4 KiB refresh token
		var spelled strings.Builder
		for _, r := range secret {
			fmt.Fprintf(&spelled, `\u%04x`, r) // 24 KiB: beyond maxRedactScan
		}
		got := sanitize("token "+spelled.String()+" refused", maxDescriptionRunes, newRedactor([]string{secret}))
		if got != "token [REDACTED]" {
			t.Errorf("got %.80q…, want the spelled secret redacted to the end", got)
		}
		// Text that is not cut keeps an ending that merely starts a secret.
		if got := sanitize("is invalid 5Aep", maxDescriptionRunes, newRedactor([]string{secret})); got != "is invalid 5Aep" {
			t.Errorf("got %q, want the text unchanged", got)
		}
	})
	t.Run("truncated to the rune limit", func(t *testing.T) {
		got := sanitize(strings.Repeat("日", maxDescriptionRunes+100), maxDescriptionRunes, nil)
		if n := utf8.RuneCountInString(got); n != maxDescriptionRunes || !strings.HasSuffix(got, "…") {
			t.Errorf("got %d runes ending %q, want %d ending with an ellipsis", n, got[len(got)-3:], maxDescriptionRunes)
		}
	})
	t.Run("a secret cut by truncation is still redacted", func(t *testing.T) {
		secret := strings.Repeat("s", 50)
		got := sanitize(strings.Repeat("x", 180)+secret, maxDescriptionRunes, newRedactor([]string{secret}))
		if strings.Contains(got, "sssss") {
			t.Errorf("got %q, holds part of the secret", got)
		}
	})
}

func TestZeroOutcomeIsUnknown(t *testing.T) {
	var e Error
	if e.Outcome != OutcomeUnknown {
		t.Errorf("zero Outcome = %v, want unknown: the conservative default", e.Outcome)
	}
	if e.Permanent() {
		t.Errorf("zero Error is permanent")
	}
}

func TestCheckInstanceURLDomains(t *testing.T) {
	ep := Endpoint{Kind: KindOAuth2, TokenURL: "https://auth.example.org/oauth2/token", InstanceURLDomain: ".salesforce.mil"}
	for raw, ok := range map[string]bool{
		"https://auth.example.org":         true, // the token endpoint's own host
		"https://AUTH.example.org/api":     true,
		"https://api.auth.example.org":     false, // not a subdomain rule
		"https://salesforce.mil":           true,
		"https://acme.my.salesforce.mil":   true,
		"https://evilsalesforce.mil":       false,
		"https://acme.my.salesforce.com":   true,
		"https://localhost:8443":           true,
		"http://[::1]:8080":                true,
		"ftp://acme.my.salesforce.com":     false,
		"https://acme.my.salesforce.com:x": false,
	} {
		if got := checkInstanceURL(raw, ep) == ""; got != ok {
			t.Errorf("checkInstanceURL(%q) accepted = %v, want %v", raw, got, ok)
		}
	}
}

// BenchmarkRedactHostileErrorText is the work a provider can make us do per
// error answer: a 1 MiB error_description (cut to maxRedactScan) of base64
// text and percent escapes, against the secrets of a code exchange with a
// long client secret. Compare with a plain description in the same run.
func BenchmarkRedactHostileErrorText(b *testing.B) {
	secrets := []string{strings.Repeat("5Aep861Qx/+z", 8), strings.Repeat("verifier-0123", 4), strings.Repeat("cs/+secret=é", 60)}
	hostile := strings.Repeat("QUJDREVGR0g%2Fxyz+", 1<<16)
	for _, bc := range []struct{ name, text string }{{"plain", "expired access/refresh token"}, {"hostile 1 MiB", hostile}} {
		b.Run(bc.name, func(b *testing.B) {
			for range b.N {
				sanitize(bc.text, maxDescriptionRunes, newRedactor(secrets))
			}
		})
	}
}
