package providersim

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Fixed identity of the simulated org and user. Salesforce puts the 15-char
// org id before the "!" of every access token.
const (
	orgID       = "00Dxx0000001gEREAY"
	orgID15     = "00Dxx0000001gER"
	userID      = "005xx000001X8Uz"
	username    = "user@example.com"
	identityFmt = "%s/id/" + orgID + "/" + userID
)

// defaultScopes apply when an authorization request names none, standing in
// for the connected app's selected scopes.
var defaultScopes = []string{"api", "refresh_token"}

// tokenKey is the SHA-256 digest under which a token is stored, so the
// simulator's state never holds a token value.
type tokenKey [sha256.Size]byte

func keyOf(token string) tokenKey { return sha256.Sum256([]byte(token)) }

// family is everything issued from one user authorization: it lives and is
// revoked as a whole.
type family struct {
	id       string // internal, for logs only
	clientID string
	scopes   []string
	revoked  bool
	current  *refreshToken
	// previous is the token current superseded, the only one the reuse grace
	// window can accept.
	previous *refreshToken
}

type refreshToken struct {
	fam          *family
	superseded   bool
	supersededAt time.Time
	graceUsed    bool
}

type accessToken struct {
	fam       *family
	issuedAt  time.Time
	expiresAt time.Time
	revoked   bool
}

type authCode struct {
	clientID    string
	redirectURI string
	challenge   string
	scopes      []string
	expiresAt   time.Time
}

// randomString returns n random bytes in enc. crypto/rand.Read cannot fail
// since Go 1.24 (it aborts the program instead).
func randomString(enc *base64.Encoding, n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return enc.EncodeToString(b)
}

// Token shapes follow Salesforce's: an access token is the org id, "!", and
// an opaque string; refresh tokens start "5Aep86"; authorization codes start
// "aPrx" and end in "==", so clients must URL-encode them.
func newAccessTokenValue() string {
	return orgID15 + "!" + randomString(base64.RawURLEncoding, 72)
}
func newRefreshTokenValue() string { return "5Aep861" + randomString(base64.RawURLEncoding, 60) }
func newCodeValue() string         { return "aPrx" + randomString(base64.StdEncoding, 46) }

// grantsRefresh reports whether Salesforce issues a refresh token for scopes.
func grantsRefresh(scopes []string) bool {
	return slices.ContainsFunc(scopes, func(sc string) bool {
		return sc == "refresh_token" || sc == "offline_access" || sc == "full"
	})
}

func parseScopes(raw string) []string {
	var out []string
	for _, sc := range strings.Fields(raw) {
		if !slices.Contains(out, sc) {
			out = append(out, sc)
		}
	}
	return out
}

// newFamilyLocked creates a family with a current refresh token if the
// scopes grant one. s.mu must be held.
func (s *Server) newFamilyLocked(clientID string, scopes []string) (*family, string) {
	s.famSeq++
	f := &family{id: "fam-" + strconv.Itoa(s.famSeq), clientID: clientID, scopes: slices.Clone(scopes)}
	if !grantsRefresh(scopes) {
		return f, ""
	}
	return f, s.issueRefreshLocked(f)
}

// issueRefreshLocked makes a new refresh token the family's current one.
// s.mu must be held.
func (s *Server) issueRefreshLocked(f *family) string {
	v := newRefreshTokenValue()
	s.secrets = append(s.secrets, v)
	rt := &refreshToken{fam: f}
	s.refresh[keyOf(v)] = rt
	f.current = rt
	return v
}

// issueAccessLocked mints an access token of the family. s.mu must be held.
func (s *Server) issueAccessLocked(f *family, now time.Time) string {
	v := newAccessTokenValue()
	s.secrets = append(s.secrets, v)
	s.access[keyOf(v)] = &accessToken{fam: f, issuedAt: now, expiresAt: now.Add(s.cfg.SessionTimeout)}
	return v
}

// revokeFamilyLocked revokes f and reports whether it was live. s.mu must
// be held.
func (s *Server) revokeFamilyLocked(f *family, reason string) bool {
	if f.revoked {
		return false
	}
	f.revoked = true
	s.stats.FamiliesRevoked++
	s.log.Warn("providersim: token family revoked", "family", f.id, "client_id", f.clientID, "reason", reason)
	return true
}

func (a *accessToken) activeAt(now time.Time) bool {
	return !a.revoked && !a.fam.revoked && now.Before(a.expiresAt)
}

func (r *refreshToken) active() bool { return !r.superseded && !r.fam.revoked }

func (s *Server) identityURL() string { return fmt.Sprintf(identityFmt, s.url) }

// signature is Salesforce's response signature:
// base64(HMAC-SHA256(key = client secret, message = id + issued_at)).
func signature(secret, id, issuedAt string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(id + issuedAt))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

func secretsEqual(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// IssueRefreshToken simulates a user who authorized clientID elsewhere: it
// starts a new family and returns its refresh token. nil scopes mean
// "api refresh_token". It returns ErrUnknownClient or ErrNoRefreshScope.
func (s *Server) IssueRefreshToken(clientID string, scopes []string) (string, error) {
	if len(scopes) == 0 {
		scopes = defaultScopes
	}
	if !grantsRefresh(scopes) {
		return "", fmt.Errorf("%w: %q", ErrNoRefreshScope, strings.Join(scopes, " "))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.clients[clientID]; !ok {
		return "", fmt.Errorf("%w: %q", ErrUnknownClient, clientID)
	}
	f, rt := s.newFamilyLocked(clientID, parseScopes(strings.Join(scopes, " ")))
	s.log.Info("providersim: refresh token issued out of band", "family", f.id, "client_id", clientID)
	return rt, nil
}

// RevokeFamilyOf revokes the family of a refresh or access token, as an
// admin revoking the app's authorization in Salesforce would. It reports
// whether a live family was revoked.
func (s *Server) RevokeFamilyOf(refreshOrAccessToken string) bool {
	k := keyOf(refreshOrAccessToken)
	s.mu.Lock()
	defer s.mu.Unlock()
	if rt, ok := s.refresh[k]; ok {
		return s.revokeFamilyLocked(rt.fam, "admin")
	}
	if at, ok := s.access[k]; ok {
		return s.revokeFamilyLocked(at.fam, "admin")
	}
	return false
}

// AccessTokenActive reports whether accessToken would be accepted by the
// API now: issued here, not revoked, family not revoked, session not timed
// out.
func (s *Server) AccessTokenActive(accessToken string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.access[keyOf(accessToken)]
	return ok && at.activeAt(s.now())
}

func joinScopes(scopes []string) string { return strings.Join(scopes, " ") }
