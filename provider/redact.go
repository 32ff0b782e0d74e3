package provider

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/url"
	"os"
	"slices"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// A provider that echoes a refused request back in its error text (to help
// a developer, or to harm us) echoes it encoded: the form body
// percent-encoded, the Authorization header as base64 of id:secret, the
// parameters as a JSON string. The redactor finds every secret the request
// carried in any of these spellings, so that the text can go into an error,
// a log line, last_error or an audit record.
//
// Every secret rune is matched in each of its spellings — itself,
// percent-encoded (either case of hex, also double-encoded as %25XX, '+' for
// a space), JSON-escaped (\uXXXX in either case, \/, \", \\) — so one
// matcher covers query-, path- and form-encoding, JSON escaping and mixes of
// them. Base64 is not a per-rune spelling: the redactor searches for the
// base64 of each secret (and of its percent-encoded forms, which HTTP Basic
// carries) at each of the three byte alignments, so the secret is found
// inside the base64 of a longer text such as "id:secret", and blanks the
// whole base64 run around the match.

// maxRedactScan bounds the provider text searched for secrets (and so the
// work a provider can make us do per error); longer text is cut first.
// Error texts are truncated to a few hundred runes after redaction, so
// nothing beyond the cut survives anyway; a spelling of a secret that runs
// into the cut is redacted to the end, so no prefix of it survives either.
const maxRedactScan = 16 << 10

// minBase64Core is the shortest base64 text searched for: shorter ones
// would blank unrelated base64 by chance (they come from secrets of one or
// two bytes, which are matched plainly anyway).
const minBase64Core = 4

// redactor blanks every spelling of a request's secrets. It is built per
// request and read-only afterwards.
type redactor struct {
	needles []needle
}

// needle is one text to find. spellings[i] are the ways its i-th rune may
// be written; first marks the bytes a match can start with.
type needle struct {
	spellings [][]string
	first     [256]bool
	// base64 widens a match to the whole run of base64 characters around
	// it: the run encodes the secret's neighbours too, and its edges carry
	// bits of the secret's first and last bytes.
	base64 bool
}

// newRedactor returns a redactor for secrets (empty ones are ignored).
func newRedactor(secrets []string) *redactor {
	r := &redactor{}
	seen := make(map[string]bool)
	spellings := make(map[rune][]string) // shared: needles repeat runes
	add := func(s string, b64 bool) {
		if s == "" || seen[s] {
			return
		}
		seen[s] = true
		r.needles = append(r.needles, newNeedle(s, b64, spellings))
	}
	for _, s := range secrets {
		add(s, false)
	}
	for _, s := range secrets {
		if s == "" {
			continue
		}
		// HTTP Basic carries the form-encoded secret (RFC 6749 §2.3.1).
		for _, form := range []string{s, url.QueryEscape(s), url.PathEscape(s)} {
			for _, core := range base64Cores(form) {
				add(core, true)
			}
		}
	}
	return r
}

func newNeedle(s string, b64 bool, spellings map[rune][]string) needle {
	n := needle{base64: b64}
	for _, r := range s {
		sp, ok := spellings[r]
		if !ok {
			sp = runeSpellings(r)
			spellings[r] = sp
		}
		n.spellings = append(n.spellings, sp)
	}
	for _, sp := range n.spellings[0] {
		n.first[sp[0]] = true
	}
	return n
}

// runeSpellings lists how r may appear in percent-encoded or JSON text.
func runeSpellings(r rune) []string {
	sp := []string{string(r)}
	var utf [utf8.UTFMax]byte
	b := utf[:utf8.EncodeRune(utf[:], r)]
	for _, digits := range []string{upperHex, lowerHex} {
		var once, twice []byte
		for _, c := range b {
			once = append(once, '%', digits[c>>4], digits[c&15])
			twice = append(twice, '%', '2', '5', digits[c>>4], digits[c&15])
		}
		sp = append(sp, string(once), string(twice))
		if r <= 0xFFFF {
			sp = append(sp, jsonEscape(r, digits))
		} else {
			hi, lo := utf16.EncodeRune(r)
			sp = append(sp, jsonEscape(hi, digits)+jsonEscape(lo, digits))
		}
	}
	switch r {
	case ' ':
		sp = append(sp, "+")
	case '/', '"', '\\':
		sp = append(sp, `\`+string(r))
	}
	return sp
}

const (
	upperHex = "0123456789ABCDEF"
	lowerHex = "0123456789abcdef"
)

// jsonEscape returns \uXXXX for a UTF-16 code unit.
func jsonEscape(u rune, digits string) string {
	return string([]byte{'\\', 'u', digits[u>>12&15], digits[u>>8&15], digits[u>>4&15], digits[u&15]})
}

// base64Cores returns the base64 text that encodes s wherever s starts in
// the encoded data (offset 0, 1 or 2 modulo 3), in the standard and URL
// alphabets: only the characters made of s's bits alone, so each core is a
// substring of the base64 of any text containing s at that alignment.
func base64Cores(s string) []string {
	var cores []string
	for k := range 3 {
		data := append(make([]byte, k), s...)
		for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
			text := enc.EncodeToString(data)
			// Character i of a 4-character group holds bits 6i..6i+5 of
			// its 3 bytes: with k unknown leading bytes the first clean
			// character is the first with 6i >= 8k.
			start := (8*k + 5) / 6
			end := len(text)
			if len(data)%3 != 0 {
				end-- // mixes in the bits of whatever follows s
			}
			if end-start >= minBase64Core {
				cores = append(cores, text[start:end])
			}
		}
	}
	return cores
}

// redact returns s with every spelling of every secret replaced by
// redactedMark. s is cut to maxRedactScan bytes first.
func (r *redactor) redact(s string) string {
	if r == nil || len(r.needles) == 0 {
		return s
	}
	cut := len(s) > maxRedactScan
	if cut {
		s = strings.ToValidUTF8(s[:maxRedactScan], "")
	}
	var b strings.Builder
	done := 0 // s[:done] is written to b
	for p := 0; p < len(s); {
		end, b64 := -1, false
		for i := range r.needles {
			n := &r.needles[i]
			if !n.first[s[p]] {
				continue
			}
			if e := n.matchAt(s, p, cut); e > end {
				end, b64 = e, n.base64
			}
		}
		if end < 0 {
			p++
			continue
		}
		start := p
		if b64 {
			for start > done && isBase64Run(s[start-1]) {
				start--
			}
			for end < len(s) && isBase64Run(s[end]) {
				end++
			}
		}
		b.WriteString(s[done:start])
		b.WriteString(redactedMark)
		done, p = end, end
	}
	if done == 0 {
		return s
	}
	b.WriteString(s[done:])
	return b.String()
}

// matchAt returns the end of the longest spelling of n at s[p:], or -1.
// It follows every way of spelling the runes so far at once, so a '%' that
// may be the secret's own or the start of an escape costs no backtracking.
// With cut (s is the start of a longer text), a spelling still matching
// where s ends matches up to there.
func (n *needle) matchAt(s string, p int, cut bool) int {
	// Few spellings of a prefix end at different places: no allocation
	// for the common case.
	var buf1, buf2 [8]int
	cur, next := append(buf1[:0], p), buf2[:0]
	for _, alts := range n.spellings {
		next = next[:0]
		for _, q := range cur {
			for _, alt := range alts {
				if cut && len(s)-q < len(alt) && strings.HasPrefix(alt, s[q:]) {
					return len(s) // the text ends inside this spelling
				}
				if strings.HasPrefix(s[q:], alt) && !slices.Contains(next, q+len(alt)) {
					next = append(next, q+len(alt))
				}
			}
		}
		if len(next) == 0 {
			return -1
		}
		cur, next = next, cur
	}
	return slices.Max(cur)
}

// isBase64Run reports characters of base64 text in either alphabet, with
// padding, and as it looks percent- or JSON-escaped.
func isBase64Run(c byte) bool {
	switch {
	case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("+/=-_%\\", c) >= 0
}

// maxErrRunes bounds the text of a transport error kept in Error.Err.
const maxErrRunes = 300

// redactedError is a transport error whose text held provider bytes
// (net/http quotes a malformed status line or header in its message) with
// a secret in them: the text is redacted, and only the sentinel a caller
// may test for is kept, so that no secret stays reachable through Unwrap.
type redactedError struct {
	msg   string
	cause error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.cause }

// clean returns err, or when its text is not clean provider-safe text (a
// secret, a control character, excessive length), a redactedError.
func (r *redactor) clean(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	safe := sanitize(msg, maxErrRunes, r)
	if safe == msg {
		return err
	}
	e := &redactedError{msg: safe}
	// The errors a caller of this package may test a transport error for.
	for _, c := range []error{context.DeadlineExceeded, context.Canceled, os.ErrDeadlineExceeded, io.ErrUnexpectedEOF, io.EOF} {
		if errors.Is(err, c) {
			e.cause = c
			break
		}
	}
	return e
}
