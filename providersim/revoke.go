package providersim

import "net/http"

// handleRevoke revokes an access token alone, or a refresh token with its
// whole family. Unlike RFC 7009, Salesforce answers 400 invalid_token for a
// token it does not know (or that is already dead). A superseded refresh
// token still names its family, so revoking it revokes the family.
func (s *Server) handleRevoke(w http.ResponseWriter, r *http.Request) {
	s.answer(w, r, s.revoke(r))
}

func (s *Server) revoke(r *http.Request) response {
	if err := r.ParseForm(); err != nil {
		return oauthError(http.StatusBadRequest, "invalid_request", "malformed or oversized request body")
	}
	token := r.PostForm.Get("token")
	invalid := oauthError(http.StatusBadRequest, "invalid_token", "invalid token")
	if token == "" {
		return invalid
	}
	k := keyOf(token)
	s.mu.Lock()
	defer s.mu.Unlock()
	if at, ok := s.access[k]; ok {
		if !at.activeAt(s.now()) {
			return invalid
		}
		at.revoked = true
		s.stats.Revocations++
		s.log.Info("providersim: access token revoked", "family", at.fam.id, "client_id", at.fam.clientID)
		return response{status: http.StatusOK}
	}
	if rt, ok := s.refresh[k]; ok {
		if !s.revokeFamilyLocked(rt.fam, "revoke endpoint") {
			return invalid
		}
		s.stats.Revocations++
		return response{status: http.StatusOK}
	}
	return invalid
}
