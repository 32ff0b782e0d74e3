package provider

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client calls providers' OAuth endpoints. It is safe for concurrent use and
// holds no per-provider state: every call names its Endpoint and
// ClientCredentials. It never retries; see Error.
type Client struct {
	hc        *http.Client
	now       func() time.Time
	userAgent string
}

const (
	// defaultTimeout bounds a whole call, body included, when New is given
	// no http.Client. A refresh cut short by it is OutcomeUnknown.
	defaultTimeout = 30 * time.Second
	// maxResponseBytes bounds a response body read.
	maxResponseBytes = 1 << 20
	defaultUserAgent = "rotavault-provider/1"
	// idleConnTimeout bounds how long an idle provider connection is kept.
	idleConnTimeout = 30 * time.Second
	// maxIdleConnsPerHost is how many idle connections to one provider host
	// are kept (Go's default is 2): as many as the broker's own concurrency
	// towards a provider (32 scheduled refreshes, 32 introspections by
	// default), so that refreshes and checks in flight together find a
	// connection again next time instead of each opening a new one.
	maxIdleConnsPerHost = 32
)

// New returns a Client sending requests with httpClient, or, when it is nil,
// with a client that has a 30 s overall timeout and keeps up to
// maxIdleConnsPerHost idle connections per host for idleConnTimeout. Reusing connections saves a TCP and TLS handshake per
// refresh, which matters when thousands of credentials rotate against one
// provider host. Its risk is bounded: a server that closes an idle connection
// just as a refresh is written leaves that refresh's outcome unknown, which
// costs the broker one in-doubt write and one retry of the same token (the
// provider never saw it), never a family. The idle timeout stays below the
// 60 s that load balancers in front of providers commonly allow, so that
// race needs the server to close early.
//
// The Client never follows redirects, whatever httpClient.CheckRedirect says:
// a 3xx answer is an *Error matching ErrRedirect. httpClient itself is not
// modified.
func New(httpClient *http.Client, opts ...Option) *Client {
	var hc http.Client
	if httpClient != nil {
		hc = *httpClient
	} else {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.IdleConnTimeout = idleConnTimeout
		tr.MaxIdleConnsPerHost = maxIdleConnsPerHost
		hc = http.Client{Transport: tr, Timeout: defaultTimeout}
	}
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	c := &Client{hc: &hc, now: time.Now, userAgent: defaultUserAgent}
	for _, o := range opts {
		o.apply(c)
	}
	return c
}

// Refresh redeems refreshToken at ep.TokenURL (grant_type=refresh_token).
// With rotation the returned Token carries a new RefreshToken and the sent
// one is dead; an empty RefreshToken means the provider did not rotate. For
// KindSalesforce with a client secret the response signature is checked and
// reported in Token.SignatureStatus; a mismatch is not an error.
//
// Errors are *Error with Op "refresh"; see Outcome for what each means for a
// retry.
func (c *Client) Refresh(ctx context.Context, ep Endpoint, cc ClientCredentials, refreshToken string) (*Token, error) {
	const op = "refresh"
	if refreshToken == "" {
		return nil, invalidArgument(op, "empty refresh token")
	}
	form := url.Values{
		"grant_type":    {"refresh_token"},
		"refresh_token": {refreshToken},
	}
	return c.token(ctx, op, ep, cc, form, refreshToken)
}

// ExchangeCode redeems an authorization code at ep.TokenURL
// (grant_type=authorization_code). redirectURI must be the one used in the
// authorization request; codeVerifier is the PKCE verifier, or empty when
// PKCE was not used. The Salesforce signature is handled as in Refresh.
//
// Errors are *Error with Op "exchange".
func (c *Client) ExchangeCode(ctx context.Context, ep Endpoint, cc ClientCredentials, code, redirectURI, codeVerifier string) (*Token, error) {
	const op = "exchange"
	if code == "" {
		return nil, invalidArgument(op, "empty authorization code")
	}
	if redirectURI == "" {
		return nil, invalidArgument(op, "empty redirect URI")
	}
	form := url.Values{
		"grant_type":   {"authorization_code"},
		"code":         {code},
		"redirect_uri": {redirectURI},
	}
	if codeVerifier != "" {
		form.Set("code_verifier", codeVerifier)
	}
	return c.token(ctx, op, ep, cc, form, code, codeVerifier)
}

// token posts a token request and reads the answer; secrets are the values
// sent that must never reach an error message.
func (c *Client) token(ctx context.Context, op string, ep Endpoint, cc ClientCredentials, form url.Values, secrets ...string) (*Token, error) {
	if e := checkCall(op, ep, cc, ep.TokenURL, "token URL"); e != nil {
		return nil, e
	}
	secrets = append(secrets, cc.ClientSecret)
	res, e := c.post(ctx, op, ep.TokenURL, cc, form, secrets)
	if e != nil {
		return nil, e
	}
	obj, e := res.object(c, "access_token")
	if e != nil {
		return nil, e
	}
	tok, reason := parseToken(obj, res.sentAt)
	if reason == "" {
		reason = checkInstanceURL(tok.InstanceURL, ep)
	}
	if reason != "" {
		return nil, res.malformed(reason)
	}
	if ep.Kind == KindSalesforce && signatureCheckable(cc.ClientSecret) {
		tok.SignatureStatus = SignatureMismatch
		if VerifySalesforceSignature(tok, cc.ClientSecret) {
			tok.SignatureStatus = SignatureValid
		}
	}
	return tok, nil
}

// AuthCodeURL returns the URL to send a person's browser to for the
// authorization code flow: ep.AuthorizeURL with response_type=code,
// client_id, redirect_uri, state, scope (space-separated, if any) and, when
// codeChallenge is set, code_challenge with code_challenge_method=S256 (see
// NewPKCE). Query parameters already in ep.AuthorizeURL are kept. The client
// secret is never part of it.
//
// It returns an error matching ErrInvalidArgument when the authorize URL,
// client id, redirect URI or state is missing, or the challenge is not an
// RFC 7636 S256 challenge.
func (c *Client) AuthCodeURL(ep Endpoint, cc ClientCredentials, redirectURI, state, codeChallenge string, scopes []string) (string, error) {
	const op = "authorize"
	if e := checkCall(op, ep, cc, ep.AuthorizeURL, "authorize URL"); e != nil {
		return "", e
	}
	switch {
	case redirectURI == "":
		return "", invalidArgument(op, "empty redirect URI")
	case state == "":
		return "", invalidArgument(op, "empty state (it protects the redirect against forgery)")
	case codeChallenge != "" && !validPKCEValue(codeChallenge):
		return "", invalidArgument(op, "code challenge is not 43-128 characters of [A-Za-z0-9-._~]")
	}
	u, err := url.Parse(ep.AuthorizeURL)
	if err != nil {
		return "", invalidArgument(op, "unparseable authorize URL")
	}
	q := u.Query()
	q.Set("response_type", "code")
	q.Set("client_id", cc.ClientID)
	q.Set("redirect_uri", redirectURI)
	q.Set("state", state)
	if len(scopes) > 0 {
		q.Set("scope", strings.Join(scopes, " "))
	}
	if codeChallenge != "" {
		q.Set("code_challenge", codeChallenge)
		q.Set("code_challenge_method", "S256")
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// Revoke revokes token (a refresh token, which for Salesforce also revokes
// its access tokens, or an access token) at ep.RevocationURL (RFC 7009). Any
// 2xx is success; RFC 7009 servers answer 200 for tokens already invalid.
//
// Errors are *Error with Op "revoke"; a 400 invalid_token or
// unsupported_token_type is OutcomeRejected.
func (c *Client) Revoke(ctx context.Context, ep Endpoint, cc ClientCredentials, token string) error {
	const op = "revoke"
	if token == "" {
		return invalidArgument(op, "empty token")
	}
	if e := checkCall(op, ep, cc, ep.RevocationURL, "revocation URL"); e != nil {
		return e
	}
	form := url.Values{"token": {token}}
	if _, e := c.post(ctx, op, ep.RevocationURL, cc, form, []string{token, cc.ClientSecret}); e != nil {
		return e
	}
	return nil
}

// TokenTypeHint is RFC 7662's token_type_hint: which kind of token an
// introspection asks about. Servers search other kinds too when the hint is
// wrong; the hint only saves them the work.
type TokenTypeHint string

const (
	// HintAccessToken asks about an access token.
	HintAccessToken TokenTypeHint = "access_token"
	// HintRefreshToken asks about a refresh token. Introspecting a refresh
	// token does not present it for a refresh: it neither rotates it nor
	// counts as a reuse.
	HintRefreshToken TokenTypeHint = "refresh_token"
)

// Introspect asks ep.IntrospectionURL about accessToken (RFC 7662,
// token_type_hint=access_token). It is IntrospectToken with
// HintAccessToken.
func (c *Client) Introspect(ctx context.Context, ep Endpoint, cc ClientCredentials, accessToken string) (Introspection, error) {
	return c.IntrospectToken(ctx, ep, cc, accessToken, HintAccessToken)
}

// IntrospectToken asks ep.IntrospectionURL whether token, of the kind hint
// names, is active (RFC 7662). An expired, revoked, rotated-away or unknown
// token is not an error: it is Introspection{Active: false}.
//
// Salesforce endpoints get the client's credentials as form fields, as its
// documentation shows; generic OAuth 2.0 endpoints get them as HTTP Basic
// (client_secret_basic), the client authentication RFC 6749 §2.3.1 requires
// every server to support and the only one some (ory/fosite) accept at
// introspection. A public client (no secret) sends its client_id in the
// form.
//
// Errors are *Error with Op "introspect"; a 2xx without a boolean "active" is
// OutcomeUnknown. No error holds the token or the client secret.
func (c *Client) IntrospectToken(ctx context.Context, ep Endpoint, cc ClientCredentials, token string, hint TokenTypeHint) (Introspection, error) {
	const op = "introspect"
	if token == "" {
		return Introspection{}, invalidArgument(op, "empty token")
	}
	if hint != HintAccessToken && hint != HintRefreshToken {
		return Introspection{}, invalidArgument(op, "token type hint must be access_token or refresh_token")
	}
	if e := checkCall(op, ep, cc, ep.IntrospectionURL, "introspection URL"); e != nil {
		return Introspection{}, e
	}
	form := url.Values{
		"token":           {token},
		"token_type_hint": {string(hint)},
	}
	def := authPost
	if ep.Kind == KindOAuth2 && cc.ClientSecret != "" {
		def = authBasic
	}
	res, e := c.send(ctx, op, ep.IntrospectionURL, cc, cc.wire(def), form, []string{token, cc.ClientSecret})
	if e != nil {
		return Introspection{}, e
	}
	obj, e := res.object(c, "active")
	if e != nil {
		return Introspection{}, e
	}
	in, ok := parseIntrospection(obj)
	if !ok {
		return Introspection{}, res.malformed(`no boolean "active"`)
	}
	return in, nil
}

// checkCall validates what every call needs before anything is sent.
func checkCall(op string, ep Endpoint, cc ClientCredentials, endpointURL, name string) *Error {
	if ep.Kind != KindSalesforce && ep.Kind != KindOAuth2 {
		return invalidArgument(op, "endpoint kind unspecified")
	}
	if cc.ClientID == "" {
		return invalidArgument(op, "empty client id")
	}
	if endpointURL == "" {
		return invalidArgument(op, "empty "+name)
	}
	u, err := url.Parse(endpointURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return invalidArgument(op, name+" is not an absolute http(s) URL")
	}
	return nil
}
