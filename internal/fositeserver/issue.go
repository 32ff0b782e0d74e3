package fositeserver

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// maxResponseBytes bounds what IssueRefreshToken reads from its own server.
const maxResponseBytes = 1 << 20

// IssueRefreshToken starts a fresh token family: it drives a full
// authorization-code flow with PKCE (S256) over HTTP against this server,
// with consent auto-approved for the user "alice", and returns the refresh
// token. With no scopes it requests every scope a client may have; otherwise
// the scopes must include offline or offline_access.
//
// Its requests go to an uninstrumented listener: they are not counted in
// Stats and never lose their response. It is safe for concurrent use. It
// returns an *OAuthError when the server refuses a step, ErrNoRefreshToken
// when no refresh token was issued, ErrClosed after Close, or a transport
// error.
func (s *Server) IssueRefreshToken(ctx context.Context, clientID, clientSecret, redirectURI string, scopes []string) (string, error) {
	select {
	case <-s.closed:
		return "", ErrClosed
	default:
	}
	if len(scopes) == 0 {
		scopes = clientScopes()
	}
	verifier := randomToken()
	state := randomToken()

	code, err := s.authorize(ctx, clientID, redirectURI, scopes, state, pkceS256(verifier))
	if err != nil {
		return "", err
	}
	return s.exchangeCode(ctx, url.Values{
		"grant_type":    {"authorization_code"},
		"code":          {code},
		"redirect_uri":  {redirectURI},
		"client_id":     {clientID},
		"client_secret": {clientSecret},
		"code_verifier": {verifier},
	})
}

// authorize asks for an authorization code and reads it from the redirect.
func (s *Server) authorize(ctx context.Context, clientID, redirectURI string, scopes []string, state, challenge string) (string, error) {
	q := url.Values{
		"response_type":         {"code"},
		"client_id":             {clientID},
		"redirect_uri":          {redirectURI},
		"scope":                 {strings.Join(scopes, " ")},
		"state":                 {state},
		"code_challenge":        {challenge},
		"code_challenge_method": {"S256"},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.internalURL+authorizePath+"?"+q.Encode(), nil)
	if err != nil {
		return "", fmt.Errorf("fositeserver: authorize request: %w", err)
	}
	resp, err := s.httpClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("fositeserver: authorize: %w", err)
	}
	body, err := readBody(resp)
	if err != nil {
		return "", fmt.Errorf("fositeserver: authorize: %w", err)
	}

	if resp.StatusCode != http.StatusSeeOther && resp.StatusCode != http.StatusFound {
		return "", decodeOAuthError("authorize", resp.StatusCode, body)
	}
	loc, err := resp.Location()
	if err != nil {
		return "", fmt.Errorf("fositeserver: authorize redirect: %w", err)
	}
	params := loc.Query()
	if code := params.Get("error"); code != "" {
		return "", &OAuthError{Endpoint: "authorize", Status: resp.StatusCode, Code: code, Description: params.Get("error_description")}
	}
	if params.Get("state") != state {
		return "", errors.New("fositeserver: authorize redirect: state does not match the request")
	}
	code := params.Get("code")
	if code == "" {
		return "", errors.New("fositeserver: authorize redirect has no code")
	}
	return code, nil
}

// exchangeCode redeems an authorization code and returns the refresh token.
func (s *Server) exchangeCode(ctx context.Context, form url.Values) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.internalURL+tokenPath, strings.NewReader(form.Encode()))
	if err != nil {
		return "", fmt.Errorf("fositeserver: token request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if s.authMethod == "client_secret_basic" {
		// The client is registered for Basic: move its credentials there.
		req.SetBasicAuth(url.QueryEscape(form.Get("client_id")), url.QueryEscape(form.Get("client_secret")))
		form.Del("client_id")
		form.Del("client_secret")
		req.Body = io.NopCloser(strings.NewReader(form.Encode()))
		req.ContentLength = int64(len(form.Encode()))
	}
	resp, err := s.httpClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("fositeserver: token: %w", err)
	}
	body, err := readBody(resp)
	if err != nil {
		return "", fmt.Errorf("fositeserver: token: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", decodeOAuthError("token", resp.StatusCode, body)
	}
	var tok struct {
		RefreshToken string `json:"refresh_token"`
	}
	if err := json.Unmarshal(body, &tok); err != nil {
		// encoding/json errors quote at most one character of the input.
		return "", fmt.Errorf("fositeserver: decoding token response: %w", err)
	}
	if tok.RefreshToken == "" {
		return "", ErrNoRefreshToken
	}
	return tok.RefreshToken, nil
}

func readBody(resp *http.Response) ([]byte, error) {
	defer resp.Body.Close()
	return io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
}

func decodeOAuthError(endpoint string, status int, body []byte) error {
	var e struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error == "" {
		return fmt.Errorf("fositeserver: %s endpoint answered %d without an OAuth error", endpoint, status)
	}
	return &OAuthError{Endpoint: endpoint, Status: status, Code: e.Error, Description: e.Description}
}

// randomToken returns 32 random bytes in base64url: a PKCE verifier of the
// 43 characters RFC 7636 recommends, or a state above fosite's entropy floor.
func randomToken() string {
	// crypto/rand.Read never fails (it crashes the program instead).
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func pkceS256(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}
