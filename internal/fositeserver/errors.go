package fositeserver

import (
	"errors"
	"fmt"
)

var (
	// ErrClosed is returned by calls that need a running server after Close.
	ErrClosed = errors.New("fositeserver: server closed")

	// ErrNoRefreshToken is returned by IssueRefreshToken when the token
	// response has no refresh token, which fosite does unless one of the
	// scopes offline or offline_access was granted.
	ErrNoRefreshToken = errors.New("fositeserver: token response has no refresh_token (grant offline or offline_access)")
)

// OAuthError is an OAuth 2.0 error answered by the server to
// IssueRefreshToken, from the authorize redirect or the token endpoint.
type OAuthError struct {
	// Endpoint is "authorize" or "token".
	Endpoint string
	// Status is the HTTP status of the answer (303 for an authorize redirect).
	Status int
	// Code is the OAuth error code, such as invalid_scope or invalid_client.
	Code string
	// Description is fosite's error_description.
	Description string
}

func (e *OAuthError) Error() string {
	return fmt.Sprintf("fositeserver: %s endpoint answered %d %s: %s", e.Endpoint, e.Status, e.Code, e.Description)
}
