package providersim

import (
	"encoding/json"
	"errors"
	"net/http"
)

// Errors returned by Server methods; check them with errors.Is.
var (
	// ErrClosed: the Server has been closed.
	ErrClosed = errors.New("providersim: server closed")
	// ErrUnknownClient: no connected app is registered under the client id.
	ErrUnknownClient = errors.New("providersim: unknown client")
	// ErrNoRefreshScope: the scopes grant no refresh token (Salesforce issues
	// one only for refresh_token, offline_access or full).
	ErrNoRefreshScope = errors.New("providersim: scopes grant no refresh token")
)

// Salesforce error texts. Clients match on the error code, but the
// descriptions are kept verbatim so logs read like production ones.
const (
	descExpiredToken   = "expired access/refresh token"
	descBadClientID    = "client identifier invalid"
	descBadClientCreds = "invalid client credentials"
	descBadCode        = "invalid authorization code"
	descBadVerifier    = "invalid code verifier"
	descRedirect       = "redirect_uri must match configuration"
	descGrantType      = "grant type not supported"
)

// response is an answer computed by an endpoint before it is written, so
// that failure injection can decide to drop it after the work is done.
type response struct {
	status int
	header http.Header
	// body is marshalled as JSON; nil means an empty body.
	body any
}

func oauthError(status int, code, desc string) response {
	return response{status: status, body: map[string]string{"error": code, "error_description": desc}}
}

func invalidGrant() response {
	return oauthError(http.StatusBadRequest, "invalid_grant", descExpiredToken)
}

func jsonResponse(status int, body any) response {
	return response{status: status, body: body}
}

func (r response) write(w http.ResponseWriter) {
	for k, vs := range r.header {
		w.Header()[k] = vs
	}
	// Token responses must never be cached (RFC 6749 §5.1); Salesforce sends
	// these on every OAuth answer.
	w.Header().Set("Cache-Control", "no-cache,must-revalidate,max-age=0,no-store,private")
	w.Header().Set("Pragma", "no-cache")
	if r.body == nil {
		w.WriteHeader(r.status)
		return
	}
	b, err := json.Marshal(r.body)
	if err != nil {
		// Only maps and structs of plain fields are marshalled here.
		http.Error(w, "providersim: encoding response", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.WriteHeader(r.status)
	_, _ = w.Write(b)
}
