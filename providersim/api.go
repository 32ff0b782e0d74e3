package providersim

import (
	"net/http"
	"strings"
)

// handleData stands for any Salesforce REST resource: it answers 200 for a
// live access token and Salesforce's INVALID_SESSION_ID otherwise.
func (s *Server) handleData(w http.ResponseWriter, r *http.Request) {
	token, ok := bearer(r.Header.Get("Authorization"))
	if !ok || !s.AccessTokenActive(token) {
		w.Header().Set("WWW-Authenticate", `Token`)
		jsonResponse(http.StatusUnauthorized, []map[string]string{{
			"errorCode": "INVALID_SESSION_ID",
			"message":   "Session expired or invalid",
		}}).write(w)
		return
	}
	jsonResponse(http.StatusOK, map[string]any{
		"ok":              true,
		"organization_id": orgID,
		"user_id":         userID,
		"identity":        s.identityURL(),
		"path":            r.URL.Path,
	}).write(w)
}

// bearer extracts the token of an "Authorization: Bearer …" header;
// Salesforce also accepts the older "OAuth" scheme.
func bearer(h string) (string, bool) {
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || token == "" {
		return "", false
	}
	if !strings.EqualFold(scheme, "Bearer") && !strings.EqualFold(scheme, "OAuth") {
		return "", false
	}
	return strings.TrimSpace(token), true
}
