package provider

import (
	"crypto/fips140"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// SignatureStatus is the result of checking a Salesforce response signature.
type SignatureStatus int

const (
	// SignatureNotChecked: not a Salesforce endpoint, or no client secret to
	// check with.
	SignatureNotChecked SignatureStatus = iota
	// SignatureValid: the signature matches HMAC-SHA256(client secret,
	// id + issued_at).
	SignatureValid
	// SignatureMismatch: the signature is wrong or absent (or id or
	// issued_at is absent), so the response cannot be shown to come from
	// Salesforce. The tokens are returned anyway: after a refresh the sent
	// refresh token may already be dead, and the caller decides.
	SignatureMismatch
)

// String returns "not checked", "valid" or "mismatch".
func (s SignatureStatus) String() string {
	switch s {
	case SignatureNotChecked:
		return "not checked"
	case SignatureValid:
		return "valid"
	case SignatureMismatch:
		return "mismatch"
	default:
		return fmt.Sprintf("SignatureStatus(%d)", int(s))
	}
}

// Token is a successful token endpoint response. Printing or logging it never
// shows AccessToken or RefreshToken: String, GoString, Format and LogValue
// redact them. encoding/json does not redact (callers may persist a Token
// that way), so log a Token itself, not a struct holding one.
type Token struct {
	AccessToken string
	// TokenType is the provider's token_type, "Bearer" when it sent none.
	TokenType string
	// RefreshToken is the new refresh token, empty when the provider did not
	// rotate (or, for a code exchange, issued none). Whether a refresh
	// rotated is decided by comparing with the token sent.
	RefreshToken string
	// InstanceURL is Salesforce's instance_url, where its APIs (and
	// introspection) live; empty for other providers.
	InstanceURL string
	// IDURL is Salesforce's identity URL (the "id" field), signed along with
	// issued_at.
	IDURL string
	// Signature is Salesforce's base64 HMAC-SHA256 over IDURL + issued_at.
	Signature string
	// Scopes are the granted scopes; nil when the provider did not say
	// (RFC 6749: then they equal the requested ones).
	Scopes []string
	// IssuedAt is Salesforce's issued_at; for other providers, or when it is
	// missing or unreadable, the time the request was sent, so that an
	// expiry computed from it errs early.
	IssuedAt time.Time
	// ExpiresIn is the access token's lifetime from expires_in, 0 when the
	// provider sent none (Salesforce: the app's session timeout applies) or
	// one beyond MaxExpiresIn.
	ExpiresIn time.Duration
	// IgnoredExpiresIn is an expires_in beyond MaxExpiresIn (at most 100
	// years), which ExpiresIn does not take: the caller applies the
	// lifetime it would assume without one, and should say so. 0 otherwise.
	IgnoredExpiresIn time.Duration
	// SignatureStatus is set by Refresh and ExchangeCode.
	SignatureStatus SignatureStatus
	// RequestedAt is when the request that obtained the token was sent, by
	// the Client's clock (see WithClock). The provider issued the token
	// after it, so the token's life at the provider starts no earlier.
	RequestedAt time.Time
	// AliveAtProviderUntil is RequestedAt + ExpiresIn: until then the token
	// is surely unexpired at the provider (its life there started at
	// RequestedAt or later), so an answer calling it inactive before then
	// means it was revoked. Zero when the provider sent no expires_in.
	AliveAtProviderUntil time.Time

	// issuedAtRaw is issued_at exactly as received: the signature covers
	// the text, not the number.
	issuedAtRaw string
}

// Restamp sets RequestedAt to sent, when the caller's clock says the request
// went out: the Client's clock may be another (tests inject the broker's),
// and the broker compares the token's life with its own. Nil does nothing.
func (t *Token) Restamp(sent time.Time) {
	if t != nil {
		t.RequestedAt = sent
	}
}

// String describes the token without its secrets.
func (t Token) String() string {
	return fmt.Sprintf("Token{TokenType: %q, AccessToken: %s, RefreshToken: %s, InstanceURL: %q, IDURL: %q, Scopes: %q, IssuedAt: %s, ExpiresIn: %s, SignatureStatus: %s}",
		t.TokenType, redacted(t.AccessToken), redacted(t.RefreshToken), t.InstanceURL, t.IDURL,
		t.Scopes, t.IssuedAt.Format(time.RFC3339Nano), t.ExpiresIn, t.SignatureStatus)
}

// GoString is String, so %#v redacts too.
func (t Token) GoString() string { return "provider." + t.String() }

// Format makes every fmt verb print the redacted form; without it %x would
// print the fields, tokens included.
func (t Token) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		_, _ = fmt.Fprint(f, t.GoString())
		return
	}
	_, _ = fmt.Fprint(f, t.String())
}

// LogValue logs the token without its secrets.
func (t Token) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("token_type", t.TokenType),
		slog.Bool("refresh_token_set", t.RefreshToken != ""),
		slog.String("instance_url", t.InstanceURL),
		slog.Any("scopes", t.Scopes),
		slog.Time("issued_at", t.IssuedAt),
		slog.Duration("expires_in", t.ExpiresIn),
		slog.String("signature", t.SignatureStatus.String()),
	)
}

// VerifySalesforceSignature reports whether t.Signature is
// base64(HMAC-SHA256(key = clientSecret, message = t.IDURL + issued_at)),
// issued_at being the text Salesforce sent (for a Token not parsed by this
// package, t.IssuedAt in milliseconds). The comparison is constant-time. It
// is false when the secret, id, issued_at or signature is missing.
func VerifySalesforceSignature(t *Token, clientSecret string) bool {
	if t == nil || !signatureCheckable(clientSecret) || t.IDURL == "" || t.Signature == "" {
		return false
	}
	issuedAt := t.issuedAtRaw
	if issuedAt == "" {
		if t.IssuedAt.IsZero() {
			return false
		}
		issuedAt = strconv.FormatInt(t.IssuedAt.UnixMilli(), 10)
	}
	got, err := base64.StdEncoding.DecodeString(t.Signature)
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, []byte(clientSecret))
	mac.Write([]byte(t.IDURL + issuedAt))
	return hmac.Equal(got, mac.Sum(nil))
}

// minFIPSHMACKeyLen is the shortest HMAC key FIPS 140-3 mode accepts (112
// bits); crypto/hmac panics on a shorter one when fips140=only.
const minFIPSHMACKeyLen = 14

// signatureCheckable reports whether a signature keyed by clientSecret can
// be checked: not without a secret, and, under FIPS 140-only, not with a
// secret too short to be an approved HMAC key (real Salesforce consumer
// secrets are 64 characters; a short one is a test or a mistake, and must
// not crash the refresh that carries it).
func signatureCheckable(clientSecret string) bool {
	if clientSecret == "" {
		return false
	}
	return !fips140.Enforced() || len(clientSecret) >= minFIPSHMACKeyLen
}

// Introspection is an RFC 7662 introspection answer about a token.
type Introspection struct {
	// Active is false for an expired, revoked or unknown token.
	Active bool
	// Expiry is the token's exp; zero when the provider sent none.
	Expiry time.Time
	// Scopes are the token's scopes; nil when the provider did not say.
	Scopes []string
}

// maxExpiresInSeconds keeps expires_in*time.Second from overflowing; any
// real lifetime is far below it (100 years).
const maxExpiresInSeconds = 100 * 365 * 24 * 3600

// MaxExpiresIn is the longest access-token lifetime believed from a
// provider: 400 days, the longest a Rotavault admin may configure. Real
// ones are minutes to hours, 60 days at the very most (LinkedIn, Meta's
// long-lived tokens). A longer one is a bug or a provider that wants its
// token never refreshed — never refreshed, a token revoked at the
// provider would be handed out until it "expires" — so it is treated as no
// expires_in at all; see Token.IgnoredExpiresIn.
const MaxExpiresIn = 400 * 24 * time.Hour

// Bounds on what a provider may make us store and hand out. Every one of
// these values goes to consumers (an access token into an Authorization
// header, the instance URL as where they send it) and to people's terminals.
const (
	// maxAccessTokenLen bounds an access token. Salesforce's are about 112
	// characters, JWTs of rich IdPs a few KiB.
	maxAccessTokenLen = 8 << 10
	// maxRefreshTokenLen bounds a rotated refresh token as the access
	// token is bounded: it is stored, held in memory, and searched for in
	// every later error text (a 900 KB one made one refused refresh
	// allocate 630 MB to redact it).
	maxRefreshTokenLen = 8 << 10
	// maxTokenTypeLen bounds token_type ("Bearer", "N_A", a URI at most).
	maxTokenTypeLen = 64
	// maxScopeLen bounds the granted scope text, maxGrantedScopes its
	// entries (a credential may configure at most 64).
	maxScopeLen      = 8 << 10
	maxGrantedScopes = 256
	// maxInstanceURLLen bounds instance_url, as endpoint URLs are bounded.
	maxInstanceURLLen = 2048
)

// parseToken reads a 2xx token response leniently: once the provider issued
// an access token the refresh happened, and failing on an odd optional field
// would lose the rotated refresh token. A field of the wrong JSON type is
// treated as absent. What it refuses is a value that would be harmful to
// hand on — an access token that is not 1-8192 characters of printable
// ASCII without space (RFC 6750's b64token is narrower; Salesforce's "!"
// is in it), a refresh token over 8192 characters or outside RFC 6749's
// VSCHAR, an oversized or unprintable token_type or scope — and then
// returns nil and the reason, which names the field, never its value.
func parseToken(obj jsonObject, sentAt time.Time) (*Token, string) {
	access, _ := obj.str("access_token")
	if access == "" {
		return nil, "no access_token"
	}
	if len(access) > maxAccessTokenLen || !visibleASCII(access) {
		return nil, fmt.Sprintf("access_token is not 1-%d printable ASCII characters without spaces", maxAccessTokenLen)
	}
	t := &Token{
		AccessToken: access,
		TokenType:   "Bearer",
		IssuedAt:    sentAt,
		RequestedAt: sentAt,
	}
	if tt, _ := obj.str("token_type"); tt != "" {
		if len(tt) > maxTokenTypeLen || !visibleASCII(tt) {
			return nil, fmt.Sprintf("token_type is not 1-%d printable ASCII characters without spaces", maxTokenTypeLen)
		}
		t.TokenType = tt
	}
	t.RefreshToken, _ = obj.str("refresh_token")
	if rt := t.RefreshToken; len(rt) > maxRefreshTokenLen || !vschar(rt) {
		return nil, fmt.Sprintf("refresh_token is not 1-%d printable ASCII characters", maxRefreshTokenLen)
	}
	t.InstanceURL, _ = obj.str("instance_url")
	t.IDURL, _ = obj.str("id")
	t.Signature, _ = obj.str("signature")
	if raw, ok := obj["scope"]; ok && len(raw) > maxScopeLen {
		return nil, fmt.Sprintf("scope longer than %d bytes", maxScopeLen)
	}
	t.Scopes = obj.scopes("scope")
	if len(t.Scopes) > maxGrantedScopes {
		return nil, fmt.Sprintf("more than %d scopes", maxGrantedScopes)
	}
	for _, sc := range t.Scopes {
		if !visibleASCII(sc) {
			return nil, "a scope is not printable ASCII"
		}
	}
	if n, ok := obj.integer("expires_in"); ok && n > 0 {
		t.ExpiresIn = time.Duration(min(n, maxExpiresInSeconds)) * time.Second
		if t.ExpiresIn > MaxExpiresIn {
			t.IgnoredExpiresIn, t.ExpiresIn = t.ExpiresIn, 0
		}
	}
	if t.ExpiresIn > 0 {
		t.AliveAtProviderUntil = sentAt.Add(t.ExpiresIn)
	}
	if raw, ok := obj.scalarText("issued_at"); ok {
		t.issuedAtRaw = raw
		if ms, err := strconv.ParseInt(raw, 10, 64); err == nil && ms > 0 {
			t.IssuedAt = time.UnixMilli(ms)
		}
	}
	return t, ""
}

// visibleASCII reports whether s is non-empty printable ASCII without
// space (%x21-7E): no control character, no byte a header or a terminal
// would treat specially.
func visibleASCII(s string) bool {
	if s == "" {
		return false
	}
	for i := range len(s) {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// vschar reports whether s is RFC 6749's VSCHAR text (%x20-7E), the
// alphabet of a refresh token; "" passes: no refresh token is a valid
// answer.
func vschar(s string) bool {
	for i := range len(s) {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// checkInstanceURL returns why raw may not be a token's instance URL, or ""
// when it may: https on Salesforce's domains, the token endpoint's own host
// or ep.InstanceURLDomain; http or https on a loopback host (the simulator,
// `rotavault dev`). An instance URL is where consumers send the access
// token, so one elsewhere would hand it to whoever runs that host.
func checkInstanceURL(raw string, ep Endpoint) string {
	const bad = "instance_url is not an https URL on the provider's domains"
	if raw == "" {
		return ""
	}
	if len(raw) > maxInstanceURLLen || !visibleASCII(raw) {
		return bad
	}
	u, err := url.Parse(raw)
	if err != nil || u.User != nil || u.Host == "" || u.Opaque != "" {
		return bad
	}
	host := strings.ToLower(u.Hostname())
	if isLoopbackHost(host) {
		if u.Scheme == "http" || u.Scheme == "https" {
			return ""
		}
		return bad
	}
	if u.Scheme != "https" {
		return bad
	}
	// Salesforce's instance URLs: acme.my.salesforce.com,
	// acme.lightning.force.com…
	domains := []string{"salesforce.com", "force.com", ep.InstanceURLDomain}
	if tu, err := url.Parse(ep.TokenURL); err == nil && strings.EqualFold(tu.Hostname(), host) {
		return ""
	}
	for _, d := range domains {
		d = strings.ToLower(strings.Trim(d, "."))
		if d != "" && (host == d || strings.HasSuffix(host, "."+d)) {
			return ""
		}
	}
	return bad
}

// isLoopbackHost reports localhost and loopback IP addresses.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// parseIntrospection reads a 2xx introspection response; ok is false
// without a boolean "active".
func parseIntrospection(obj jsonObject) (Introspection, bool) {
	active, ok := obj.boolean("active")
	if !ok {
		return Introspection{}, false
	}
	in := Introspection{Active: active, Scopes: obj.scopes("scope")}
	if exp, ok := obj.integer("exp"); ok && exp > 0 && exp < 1<<40 {
		in.Expiry = time.Unix(exp, 0)
	}
	return in, true
}

// splitScopes splits a space-separated scope list; nil for none.
func splitScopes(s string) []string {
	f := strings.Fields(s)
	if len(f) == 0 {
		return nil
	}
	return f
}
