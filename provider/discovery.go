package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Authorization server metadata (RFC 8414; OpenID Connect Discovery 1.0
// publishes the same fields). A provider that publishes it needs only its
// issuer configured: the endpoints and the client authentication methods it
// supports are read from the document.

const (
	// maxMetadataBytes bounds a metadata document. Real ones are 2-10 KiB
	// (Okta's, with every OpenID field, about 6); a larger one is refused,
	// not cut.
	maxMetadataBytes = 64 << 10
	// discoveryTimeout bounds one discovery, both well-known URLs included.
	discoveryTimeout = 10 * time.Second
	// maxMetadataURLLen bounds each URL taken from a document, as
	// endpoint URLs are bounded when configured.
	maxMetadataURLLen = 2048
	// maxAuthMethods bounds token_endpoint_auth_methods_supported.
	maxAuthMethods = 32
)

// Well-known paths: RFC 8414 §3 and OpenID Connect Discovery §4.
const (
	oauthMetadataPath = "/.well-known/oauth-authorization-server"
	oidcMetadataPath  = "/.well-known/openid-configuration"
)

// ErrDiscovery matches every error of Discover.
var ErrDiscovery = errors.New("provider: discovery failed")

// ErrDiscoveryUnavailable matches (besides ErrDiscovery) the errors of
// Discover that say nothing about the issuer: it could not be reached, did
// not answer in time, or answered "try later" (HTTP 429 or 5xx). Asking
// again later may succeed; the other errors need a different issuer.
var ErrDiscoveryUnavailable = fmt.Errorf("%w: issuer unavailable", ErrDiscovery)

// Metadata is what an authorization server's metadata document says about
// the endpoints and client authentication Rotavault uses. URLs are empty
// where the document names none. Its zero value means nothing was found.
type Metadata struct {
	// Issuer is the document's issuer, equal to the one asked for.
	Issuer string
	// URL is where the document was fetched.
	URL                         string
	TokenEndpoint               string
	AuthorizationEndpoint       string
	RevocationEndpoint          string
	IntrospectionEndpoint       string
	DeviceAuthorizationEndpoint string
	// TokenEndpointAuthMethods is token_endpoint_auth_methods_supported as
	// published; nil when absent, which RFC 8414 §2 defines as
	// client_secret_basic.
	TokenEndpointAuthMethods []string
}

// AuthMethod is the client authentication to use at this provider for a
// client with a secret: client_secret_basic when the provider lists it (or
// lists nothing, which means it), as RFC 6749 §2.3.1 prefers; else
// client_secret_post when listed; else AuthDefault (the provider lists
// neither, e.g. only private_key_jwt, which Rotavault does not speak).
func (m Metadata) AuthMethod() AuthMethod {
	switch {
	case m.TokenEndpointAuthMethods == nil, slices.Contains(m.TokenEndpointAuthMethods, "client_secret_basic"):
		return AuthSecretBasic
	case slices.Contains(m.TokenEndpointAuthMethods, "client_secret_post"):
		return AuthSecretPost
	}
	return AuthDefault
}

// Endpoint returns m's endpoints as a KindOAuth2 Endpoint.
func (m Metadata) Endpoint() Endpoint {
	return Endpoint{
		Kind: KindOAuth2, TokenURL: m.TokenEndpoint, AuthorizeURL: m.AuthorizationEndpoint,
		RevocationURL: m.RevocationEndpoint, IntrospectionURL: m.IntrospectionEndpoint,
		DeviceAuthorizationURL: m.DeviceAuthorizationEndpoint,
	}
}

// MetadataURLs returns where issuer's metadata may be published, in the
// order Discover tries them: RFC 8414's (the well-known path inserted
// between host and path) and OpenID Connect's (appended to the issuer).
func MetadataURLs(issuer string) ([]string, error) {
	u, err := parseIssuer(issuer)
	if err != nil {
		return nil, err
	}
	path := strings.TrimSuffix(u.EscapedPath(), "/")
	oauth := *u
	oauth.RawPath = ""
	oauth.Path = ""
	oauthURL := oauth.String() + oauthMetadataPath + path
	return []string{oauthURL, strings.TrimSuffix(issuer, "/") + oidcMetadataPath}, nil
}

// parseIssuer checks issuer as RFC 8414 §2 defines it: an https URL with no
// query or fragment; http only on a loopback host (tests, `rotavault dev`).
func parseIssuer(issuer string) (*url.URL, error) {
	u, err := url.Parse(issuer)
	switch {
	case err != nil || len(issuer) > maxMetadataURLLen:
		return nil, fmt.Errorf("%w: issuer is not a URL of at most %d bytes", ErrDiscovery, maxMetadataURLLen)
	case u.Host == "" || u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Opaque != "":
		return nil, fmt.Errorf("%w: issuer must be an absolute URL without user info, query or fragment (RFC 8414 §2)", ErrDiscovery)
	case !secureOrLoopback(u):
		return nil, fmt.Errorf("%w: issuer must be https (http only on a loopback host)", ErrDiscovery)
	}
	return u, nil
}

func secureOrLoopback(u *url.URL) bool {
	return u.Scheme == "https" || (u.Scheme == "http" && isLoopbackHost(strings.ToLower(u.Hostname())))
}

// Discover fetches issuer's metadata: RFC 8414's well-known URL first and,
// when that answers 404 or 410, OpenID Connect's. The fetch is bounded
// (discoveryTimeout overall, maxMetadataBytes per document, no redirect
// followed), the issuer and every endpoint in the document must be https
// (http only on loopback), and the document's issuer must be exactly the one
// asked for (RFC 8414 §3.3): a document naming another issuer could send
// our client secret to its endpoints.
//
// Errors match ErrDiscovery and name the URL and what was wrong, never a
// document's content beyond a bounded, cleaned field; those that say
// nothing about the issuer (unreachable, too slow, HTTP 429 or 5xx) also
// match ErrDiscoveryUnavailable.
func (c *Client) Discover(ctx context.Context, issuer string) (Metadata, error) {
	urls, err := MetadataURLs(issuer)
	if err != nil {
		return Metadata{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, discoveryTimeout)
	defer cancel()
	var errs []error
	for _, u := range urls {
		m, notFound, err := c.fetchMetadata(ctx, u)
		if err == nil {
			return m, checkMetadata(m, issuer)
		}
		errs = append(errs, err)
		if !notFound {
			break
		}
	}
	return Metadata{}, errors.Join(errs...)
}

// fetchMetadata GETs one document; notFound reports a 404 or 410, after
// which the other well-known URL is worth trying.
func (c *Client) fetchMetadata(ctx context.Context, metadataURL string) (m Metadata, notFound bool, err error) {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrDiscovery, metadataURL, fmt.Sprintf(format, args...))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metadataURL, nil)
	if err != nil {
		return Metadata{}, false, fail("bad URL")
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)
	resp, err := c.hc.Do(req)
	if err != nil {
		return Metadata{}, false, fmt.Errorf("%w: %s: %w", ErrDiscoveryUnavailable, metadataURL, unwrapURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxMetadataBytes))
		if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500 {
			return Metadata{}, false, fmt.Errorf("%w: %s: HTTP %d", ErrDiscoveryUnavailable, metadataURL, resp.StatusCode)
		}
		return Metadata{}, resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone, fail("HTTP %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxMetadataBytes+1))
	if err != nil {
		return Metadata{}, false, fmt.Errorf("%w: %s: reading: %w", ErrDiscoveryUnavailable, metadataURL, unwrapURLError(err))
	}
	if len(body) > maxMetadataBytes {
		return Metadata{}, false, fail("document larger than %d bytes", maxMetadataBytes)
	}
	var doc struct {
		Issuer                      string   `json:"issuer"`
		TokenEndpoint               string   `json:"token_endpoint"`
		AuthorizationEndpoint       string   `json:"authorization_endpoint"`
		RevocationEndpoint          string   `json:"revocation_endpoint"`
		IntrospectionEndpoint       string   `json:"introspection_endpoint"`
		DeviceAuthorizationEndpoint string   `json:"device_authorization_endpoint"`
		TokenEndpointAuthMethods    []string `json:"token_endpoint_auth_methods_supported"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return Metadata{}, false, fail("not a JSON metadata document")
	}
	return Metadata{
		Issuer: doc.Issuer, URL: metadataURL,
		TokenEndpoint: doc.TokenEndpoint, AuthorizationEndpoint: doc.AuthorizationEndpoint,
		RevocationEndpoint: doc.RevocationEndpoint, IntrospectionEndpoint: doc.IntrospectionEndpoint,
		DeviceAuthorizationEndpoint: doc.DeviceAuthorizationEndpoint,
		TokenEndpointAuthMethods:    doc.TokenEndpointAuthMethods,
	}, false, nil
}

// checkMetadata refuses a document for another issuer, or one whose
// endpoints we would not send a secret to.
func checkMetadata(m Metadata, issuer string) error {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrDiscovery, m.URL, fmt.Sprintf(format, args...))
	}
	if m.Issuer != issuer {
		return fail("the document names issuer %q, not %q (RFC 8414 §3.3)", sanitize(m.Issuer, 200, newRedactor(nil)), issuer)
	}
	for name, raw := range map[string]string{
		"token_endpoint": m.TokenEndpoint, "authorization_endpoint": m.AuthorizationEndpoint,
		"revocation_endpoint": m.RevocationEndpoint, "introspection_endpoint": m.IntrospectionEndpoint,
		"device_authorization_endpoint": m.DeviceAuthorizationEndpoint,
	} {
		if raw == "" {
			continue
		}
		u, err := url.Parse(raw)
		if err != nil || len(raw) > maxMetadataURLLen || u.Host == "" || u.User != nil || u.Fragment != "" || !secureOrLoopback(u) {
			return fail("%s is not an https URL (http only on loopback) of at most %d bytes", name, maxMetadataURLLen)
		}
	}
	if len(m.TokenEndpointAuthMethods) > maxAuthMethods {
		return fail("more than %d token_endpoint_auth_methods_supported", maxAuthMethods)
	}
	for _, am := range m.TokenEndpointAuthMethods {
		if len(am) > maxCodeRunes || !visibleASCII(am) {
			return fail("a token_endpoint_auth_methods_supported entry is not 1-%d printable ASCII characters", maxCodeRunes)
		}
	}
	if m.TokenEndpoint == "" {
		return fail("no token_endpoint")
	}
	return nil
}
