package providersim

import (
	"html"
	"net/http"
	"net/url"
	"slices"
	"time"
)

// codeLifetime is how long Salesforce accepts an authorization code.
const codeLifetime = 15 * time.Minute

// handleAuthorize is the consent page of the web server flow, approving at
// once. Errors that make the redirect target untrustworthy (unknown client,
// unregistered redirect_uri) answer a 400 page; the others redirect back
// with error and state, as RFC 6749 §4.1.2.1 requires.
func (s *Server) handleAuthorize(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		errorPage(w, "invalid_request", "malformed request")
		return
	}
	q := r.Form
	clientID, redirectURI := q.Get("client_id"), q.Get("redirect_uri")
	s.mu.Lock()
	c, ok := s.clients[clientID]
	s.mu.Unlock()
	if clientID == "" || !ok {
		errorPage(w, "invalid_client_id", descBadClientID)
		return
	}
	target, err := url.Parse(redirectURI)
	if redirectURI == "" || err != nil || !slices.Contains(c.RedirectURIs, redirectURI) {
		errorPage(w, "redirect_uri_mismatch", descRedirect)
		return
	}
	state := q.Get("state")
	redirect := func(params url.Values) {
		if state != "" {
			params.Set("state", state)
		}
		u := *target
		merged := u.Query()
		for k, vs := range params {
			merged[k] = vs
		}
		u.RawQuery = merged.Encode()
		http.Redirect(w, r, u.String(), http.StatusFound)
	}
	fail := func(code, desc string) {
		redirect(url.Values{"error": {code}, "error_description": {desc}})
	}

	if q.Get("response_type") != "code" {
		fail("unsupported_response_type", "response type not supported")
		return
	}
	challenge, method := q.Get("code_challenge"), q.Get("code_challenge_method")
	if challenge == "" && c.RequirePKCE {
		fail("invalid_request", "missing required code challenge")
		return
	}
	// Salesforce treats every challenge as S256; "plain" would defeat PKCE.
	if challenge != "" && method != "" && method != "S256" {
		fail("invalid_request", "invalid code challenge method")
		return
	}
	scopes := parseScopes(q.Get("scope"))
	if len(scopes) == 0 {
		scopes = defaultScopes
	}

	code := newCodeValue()
	s.mu.Lock()
	s.secrets = append(s.secrets, code)
	s.codes[keyOf(code)] = &authCode{
		clientID:    c.ID,
		redirectURI: redirectURI,
		challenge:   challenge,
		scopes:      scopes,
		expiresAt:   s.now().Add(codeLifetime),
	}
	s.mu.Unlock()
	s.log.Info("providersim: authorization approved", "client_id", c.ID, "pkce", challenge != "")
	redirect(url.Values{"code": {code}})
}

func errorPage(w http.ResponseWriter, code, desc string) {
	w.Header().Set("Content-Type", "text/html;charset=UTF-8")
	w.WriteHeader(http.StatusBadRequest)
	_, _ = w.Write([]byte("<!DOCTYPE html><html><head><title>Remote Access Error</title></head><body>" +
		"<h1>Remote Access Error</h1><p>error=" + html.EscapeString(code) +
		"&amp;error_description=" + html.EscapeString(desc) + "</p></body></html>"))
}
