package providersim

import "net/http"

// introspection is Salesforce's introspection answer; an inactive token
// shows only active=false.
type introspection struct {
	Active    bool   `json:"active"`
	Scope     string `json:"scope,omitempty"`
	ClientID  string `json:"client_id,omitempty"`
	Username  string `json:"username,omitempty"`
	Sub       string `json:"sub,omitempty"`
	TokenType string `json:"token_type,omitempty"`
	Exp       int64  `json:"exp,omitempty"`
	Iat       int64  `json:"iat,omitempty"`
	Nbf       int64  `json:"nbf,omitempty"`
}

// handleIntrospect answers RFC 7662 introspection for the calling app's own
// tokens, access and refresh tokens alike, whatever token_type_hint says
// (RFC 7662 §2.1: a wrong hint only widens the search). Salesforce reports
// another app's token as inactive unless "Introspect All Tokens" is on,
// which the simulator does not model.
func (s *Server) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	s.answer(w, r, s.introspect(r))
}

func (s *Server) introspect(r *http.Request) response {
	s.mu.Lock()
	s.stats.Introspections++
	s.mu.Unlock()
	if err := r.ParseForm(); err != nil {
		return oauthError(http.StatusBadRequest, "invalid_request", "malformed or oversized request body")
	}
	creds := readClientCreds(r)
	token := r.PostForm.Get("token")
	s.mu.Lock()
	defer s.mu.Unlock()
	c, _, ok := s.authClientLocked(creds, true)
	if !ok {
		return oauthError(http.StatusUnauthorized, "invalid_client", descBadClientCreds)
	}
	inactive := jsonResponse(http.StatusOK, introspection{Active: false})
	if token == "" {
		return inactive
	}
	k := keyOf(token)
	if at, ok := s.access[k]; ok {
		if at.fam.clientID != c.ID || !at.activeAt(s.now()) {
			return inactive
		}
		return jsonResponse(http.StatusOK, s.describeLocked(at.fam, "access_token", at.issuedAt.Unix(), at.expiresAt.Unix()))
	}
	if rt, ok := s.refresh[k]; ok {
		// A refresh token is active while its family lives and it is the
		// current one, or a superseded one the token endpoint would still
		// accept within the reuse grace window. Asking does not present it:
		// no rotation, no reuse detection.
		if rt.fam.clientID != c.ID || !(rt.active() || (!rt.fam.revoked && s.graceAppliesLocked(rt, s.now()))) {
			return inactive
		}
		// Refresh tokens carry no expiry in this simulator; Salesforce's
		// idle-timeout policies are not modelled.
		return jsonResponse(http.StatusOK, s.describeLocked(rt.fam, "refresh_token", 0, 0))
	}
	return inactive
}

func (s *Server) describeLocked(f *family, tokenType string, iat, exp int64) introspection {
	return introspection{
		Active:    true,
		Scope:     joinScopes(f.scopes),
		ClientID:  f.clientID,
		Username:  username,
		Sub:       s.identityURL(),
		TokenType: tokenType,
		Exp:       exp,
		Iat:       iat,
		Nbf:       iat,
	}
}
