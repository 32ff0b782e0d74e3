package providersim

import (
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// tokenBody is Salesforce's token response. There is deliberately no
// expires_in: Salesforce never sends one.
type tokenBody struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token,omitempty"`
	Signature    string `json:"signature"`
	Scope        string `json:"scope"`
	InstanceURL  string `json:"instance_url"`
	ID           string `json:"id"`
	TokenType    string `json:"token_type"`
	IssuedAt     string `json:"issued_at"`
}

// handleToken runs the token endpoint: count, delay, injected failure,
// processing, then the answer unless the failure drops it.
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	kind, latency := s.arriveToken()
	if !s.delay(r.Context(), latency) {
		// The client gave up (or we are closing) before the provider looked
		// at the request: nothing happened.
		dropConnection(w)
		return
	}
	if resp, ok := failBeforeProcessing(kind); ok {
		s.log.Info("providersim: injected failure", "kind", kind.String())
		s.answer(w, r, resp)
		return
	}
	resp := s.processToken(r)
	switch kind {
	case FailLoseResponse:
		s.countLost(kind)
		dropConnection(w)
		return
	case FailHang:
		s.countLost(kind)
		select {
		case <-r.Context().Done():
		case <-s.done:
		}
		dropConnection(w)
		return
	}
	s.answer(w, r, resp)
}

func (s *Server) countLost(kind FailureKind) {
	s.mu.Lock()
	s.stats.LostResponses++
	s.mu.Unlock()
	s.log.Info("providersim: injected failure after processing", "kind", kind.String())
}

func (s *Server) processToken(r *http.Request) response {
	if err := r.ParseForm(); err != nil {
		return oauthError(http.StatusBadRequest, "invalid_request", "malformed or oversized request body")
	}
	if r.PostForm.Get("response_type") == "device_code" {
		return s.deviceStart(r, false)
	}
	switch r.PostForm.Get("grant_type") {
	case "authorization_code":
		return s.codeGrant(r)
	case "refresh_token":
		return s.refreshGrant(r)
	case "device":
		return s.deviceGrant(r, false)
	case rfc8628GrantType:
		return s.deviceGrant(r, true)
	}
	return oauthError(http.StatusBadRequest, "unsupported_grant_type", descGrantType)
}

func (s *Server) codeGrant(r *http.Request) response {
	form := r.PostForm
	creds := readClientCreds(r)
	s.mu.Lock()
	defer s.mu.Unlock()
	c, errResp, ok := s.authClientLocked(creds, true)
	if !ok {
		return errResp
	}
	k := keyOf(form.Get("code"))
	ac, found := s.codes[k]
	if !found || ac.clientID != c.ID {
		return oauthError(http.StatusBadRequest, "invalid_grant", descBadCode)
	}
	// Consumed by the first attempt, right or wrong, so that a stolen code's
	// verifier cannot be guessed by retrying.
	delete(s.codes, k)
	now := s.now()
	if !now.Before(ac.expiresAt) {
		return oauthError(http.StatusBadRequest, "invalid_grant", descBadCode)
	}
	if form.Get("redirect_uri") != ac.redirectURI {
		return oauthError(http.StatusBadRequest, "redirect_uri_mismatch", descRedirect)
	}
	if v := form.Get("code_verifier"); v != "" {
		s.secrets = append(s.secrets, v)
	}
	if !verifierMatches(ac.challenge, form.Get("code_verifier")) {
		return oauthError(http.StatusBadRequest, "invalid_grant", descBadVerifier)
	}
	f, refresh := s.newFamilyLocked(c.ID, ac.scopes)
	access := s.issueAccessLocked(f, now)
	s.stats.CodeExchanges++
	s.log.Info("providersim: authorization code exchanged", "family", f.id, "client_id", c.ID,
		"refresh_token_issued", refresh != "")
	return s.tokenResponseLocked(c, f, access, refresh, now)
}

func (s *Server) refreshGrant(r *http.Request) response {
	creds := readClientCreds(r)
	token := r.PostForm.Get("refresh_token")
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.RefreshRequests++
	// Client errors are answered before the token is looked at, so a
	// misconfigured client cannot trigger reuse detection.
	c, errResp, ok := s.authClientLocked(creds, false)
	if !ok {
		return errResp
	}
	rt, found := s.refresh[keyOf(token)]
	if !found {
		return invalidGrant()
	}
	f := rt.fam
	if f.clientID != c.ID {
		return oauthError(http.StatusBadRequest, "invalid_client_id", descBadClientID)
	}
	if f.revoked {
		return invalidGrant()
	}
	now := s.now()
	if rt.superseded {
		if !s.graceAppliesLocked(rt, now) {
			s.stats.ReuseDetections++
			s.log.Warn("providersim: superseded refresh token reused", "family", f.id, "client_id", c.ID)
			s.revokeFamilyLocked(f, "refresh token reuse")
			return invalidGrant()
		}
		// Accept the retry once: the token issued in between (whose answer
		// the client presumably never saw) dies, and presenting it later is
		// reuse.
		rt.graceUsed = true
		f.current.superseded = true
		f.current.supersededAt = now
		refresh := s.issueRefreshLocked(f)
		access := s.issueAccessLocked(f, now)
		s.stats.GraceReuses++
		s.stats.Rotations++
		s.log.Info("providersim: superseded refresh token accepted within grace", "family", f.id, "client_id", c.ID)
		return s.tokenResponseLocked(c, f, access, refresh, now)
	}
	access := s.issueAccessLocked(f, now)
	var refresh string
	if !s.cfg.DisableRotation {
		rt.superseded = true
		rt.supersededAt = now
		f.previous = rt
		refresh = s.issueRefreshLocked(f)
		s.stats.Rotations++
	}
	s.log.Info("providersim: refreshed", "family", f.id, "client_id", c.ID, "rotated", refresh != "")
	return s.tokenResponseLocked(c, f, access, refresh, now)
}

func (s *Server) graceAppliesLocked(rt *refreshToken, now time.Time) bool {
	return s.cfg.ReuseGrace > 0 && rt.fam.previous == rt && !rt.graceUsed &&
		now.Sub(rt.supersededAt) < s.cfg.ReuseGrace
}

func (s *Server) tokenResponseLocked(c Client, f *family, access, refresh string, now time.Time) response {
	issuedAt := strconv.FormatInt(now.UnixMilli(), 10)
	id := s.identityURL()
	key := c.Secret
	if s.corrupt {
		key += "-forged"
	}
	return jsonResponse(http.StatusOK, tokenBody{
		AccessToken:  access,
		RefreshToken: refresh,
		Signature:    signature(key, id, issuedAt),
		Scope:        joinScopes(f.scopes),
		InstanceURL:  s.url,
		ID:           id,
		TokenType:    "Bearer",
		IssuedAt:     issuedAt,
	})
}

// verifierMatches checks PKCE S256. A code bound to no challenge must come
// without a verifier, and the reverse.
func verifierMatches(challenge, verifier string) bool {
	if challenge == "" || verifier == "" {
		return challenge == "" && verifier == ""
	}
	// Salesforce rejects verifiers containing "~" although RFC 7636 allows
	// it (reported by users, e.g. cognizant-ai-lab/nsflow#249); clients must
	// not generate them.
	if strings.Contains(verifier, "~") {
		return false
	}
	sum := sha256.Sum256([]byte(verifier))
	return secretsEqual(base64.RawURLEncoding.EncodeToString(sum[:]), challenge)
}

type clientCreds struct {
	id, secret string
	hasSecret  bool
}

// readClientCreds takes HTTP Basic credentials if present (form-encoded
// inside, RFC 6749 §2.3.1), else client_id and client_secret from the body.
// r.ParseForm must have run.
func readClientCreds(r *http.Request) clientCreds {
	if id, secret, ok := r.BasicAuth(); ok {
		if v, err := url.QueryUnescape(id); err == nil {
			id = v
		}
		if v, err := url.QueryUnescape(secret); err == nil {
			secret = v
		}
		return clientCreds{id: id, secret: secret, hasSecret: true}
	}
	return clientCreds{
		id:        r.PostForm.Get("client_id"),
		secret:    r.PostForm.Get("client_secret"),
		hasSecret: r.PostForm.Has("client_secret"),
	}
}

// authClientLocked identifies the connected app. A secret, when sent, must
// match; requireSecret also rejects its absence for apps that have one.
// s.mu must be held.
func (s *Server) authClientLocked(cr clientCreds, requireSecret bool) (Client, response, bool) {
	c, ok := s.clients[cr.id]
	if cr.id == "" || !ok {
		return Client{}, oauthError(http.StatusBadRequest, "invalid_client_id", descBadClientID), false
	}
	if (cr.hasSecret && !secretsEqual(cr.secret, c.Secret)) || (requireSecret && !cr.hasSecret && c.Secret != "") {
		return Client{}, oauthError(http.StatusBadRequest, "invalid_client", descBadClientCreds), false
	}
	return c, response{}, true
}
