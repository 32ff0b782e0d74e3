// Package credspec is a credential's configuration (Spec): its fields,
// their validation, the updates that may change them, the provider
// endpoints and client they resolve to, and the issuer metadata discovered
// for them. It holds no state; the rotation core stores specs in credential
// records.
package credspec

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/internal/textcheck"
	"github.com/rotavault/rotavault/internal/credid"
	"github.com/rotavault/rotavault/provider"
)

// ClientAuthMethod is how a client authenticates at the provider's
// endpoints (RFC 6749 §2.3.1). Its numbers are the provider client's, which
// stored specs already hold.
type ClientAuthMethod int

const (
	// ClientAuthDefault: client_secret_post, except generic providers'
	// introspection, which uses HTTP Basic.
	ClientAuthDefault = ClientAuthMethod(provider.AuthDefault)
	// ClientAuthSecretPost: client_id and client_secret as form fields.
	ClientAuthSecretPost = ClientAuthMethod(provider.AuthSecretPost)
	// ClientAuthSecretBasic: HTTP Basic; generic providers only.
	ClientAuthSecretBasic = ClientAuthMethod(provider.AuthSecretBasic)
)

// String returns the RFC 8414 name of the method or "default".
func (m ClientAuthMethod) String() string { return m.Provider().String() }

// Provider is the method as the provider client names it.
func (m ClientAuthMethod) Provider() provider.AuthMethod { return provider.AuthMethod(m) }

// ProviderKind says which dialect of OAuth a credential's provider speaks.
type ProviderKind int

const (
	ProviderUnspecified ProviderKind = iota
	ProviderSalesforce
	ProviderOAuth2
)

func (k ProviderKind) String() string {
	switch k {
	case ProviderSalesforce:
		return "salesforce"
	case ProviderOAuth2:
		return "oauth2"
	default:
		return "unspecified"
	}
}

// Defaults for credentials that leave a lifetime unset.
const (
	// DefaultSalesforceSessionTimeout is Salesforce's default session timeout,
	// used as the access-token lifetime since Salesforce sends no expires_in.
	DefaultSalesforceSessionTimeout = 2 * time.Hour
	// DefaultAccessTokenLifetime applies to generic providers that send no
	// expires_in: treating such tokens as immortal is how other brokers end up
	// handing out dead tokens.
	DefaultAccessTokenLifetime = time.Hour
	maxScopes                  = 64
	maxScopeLen                = 256
	maxURLLen                  = 2048
	maxClientIDLen             = 512
	maxClientSecretLen         = 1024
	maxDuration                = 400 * 24 * time.Hour
)

// Spec is a credential's configuration.
type Spec struct {
	ProviderKind     ProviderKind  `json:"provider_kind"`
	BaseURL          string        `json:"base_url,omitempty"`
	TokenURL         string        `json:"token_url,omitempty"`
	AuthorizeURL     string        `json:"authorize_url,omitempty"`
	RevocationURL    string        `json:"revocation_url,omitempty"`
	IntrospectionURL string        `json:"introspection_url,omitempty"`
	ClientID         string        `json:"client_id"`
	ClientSecret     string        `json:"client_secret,omitempty"`
	Scopes           []string      `json:"scopes,omitempty"`
	AccessTokenLife  time.Duration `json:"access_token_lifetime,omitempty"`
	RefreshIdle      time.Duration `json:"refresh_token_idle_timeout,omitempty"`
	RefreshMaxLife   time.Duration `json:"refresh_token_max_lifetime,omitempty"`
	ReuseGrace       time.Duration `json:"reuse_grace_period,omitempty"`

	// DeviceAuthorizationURL is RFC 8628's endpoint, for generic providers'
	// device flows (Salesforce starts them at its token endpoint).
	DeviceAuthorizationURL string `json:"device_authorization_url,omitempty"`
	// ClientAuth is how the client authenticates at the provider
	// (generic providers only).
	ClientAuth ClientAuthMethod `json:"client_auth_method,omitempty"`
	// InstanceURLDomain is a domain whose hosts a token's instance_url may
	// name besides *.salesforce.com, *.force.com and the token URL's host
	// (e.g. salesforce.mil); empty for none. Not in the API yet.
	InstanceURLDomain string `json:"instance_url_domain,omitempty"`
	// PreviousAccessToken says whether the provider kills the previous
	// access token when it rotates (see broker/cutoff.go); empty decides by
	// provider kind.
	PreviousAccessToken PreviousAccess `json:"previous_access_token,omitempty"`
	// Issuer is a generic provider's issuer identifier, whose metadata
	// (RFC 8414 / OpenID Connect discovery) fills Discovered.
	Issuer string `json:"issuer,omitempty"`
	// Discovered is the issuer's metadata as last fetched, nil without an
	// issuer. Output only: set by the broker, ignored from callers. Its
	// endpoints and client authentication apply where the fields above
	// leave them unset.
	Discovered *DiscoveredMetadata `json:"discovered_metadata,omitempty"`
}

// ValidateID checks a credential id (see package credid). Errors:
// *brokererr.InvalidArgumentError for the field credential_id.
func ValidateID(id string) error {
	if err := credid.Validate(id); err != nil {
		return &brokererr.InvalidArgumentError{Field: "credential_id", Reason: err.Error()}
	}
	return nil
}

// Redacted returns a copy without the client secret, for describing.
func (s Spec) Redacted() Spec {
	s.ClientSecret = ""
	s.Scopes = append([]string(nil), s.Scopes...)
	if s.Discovered != nil {
		d := s.Discovered.Clone()
		s.Discovered = &d
	}
	return s
}

// Validate checks a spec as a whole; field names follow the API. Errors:
// *brokererr.InvalidArgumentError.
func (s Spec) Validate() error {
	switch s.ProviderKind {
	case ProviderSalesforce:
		if s.BaseURL == "" && s.TokenURL == "" {
			return brokererr.Invalid("spec.base_url", "required for Salesforce (the My Domain URL, or https://login.salesforce.com / https://test.salesforce.com)")
		}
		if s.Issuer != "" {
			return brokererr.Invalid("spec.issuer", "only for generic OAuth 2.0 providers; Salesforce's endpoints follow from base_url")
		}
		if s.DeviceAuthorizationURL != "" {
			return brokererr.Invalid("spec.device_authorization_url", "only for generic OAuth 2.0 providers; Salesforce's device flow starts at its token endpoint")
		}
		// Refused here, not first at the reauthentication that cannot
		// yield a refresh token.
		if !GrantsRefreshToken(s.Scopes) {
			return brokererr.Invalid("spec.scopes", "Salesforce issues a refresh token only with the refresh_token (or offline_access) scope; add it, e.g. api refresh_token")
		}
	case ProviderOAuth2:
		if s.TokenURL == "" && s.Issuer == "" {
			return brokererr.Invalid("spec.token_url", "required for a generic OAuth 2.0 provider (or set spec.issuer to discover it)")
		}
		if s.Issuer != "" {
			if _, err := provider.MetadataURLs(s.Issuer); err != nil {
				return brokererr.Invalid("spec.issuer", "%v", err)
			}
		}
		if s.BaseURL != "" {
			return brokererr.Invalid("spec.base_url", "only for Salesforce; set token_url and the other endpoint URLs")
		}
	default:
		return brokererr.Invalid("spec.provider_kind", "must be salesforce or oauth2")
	}
	for field, u := range map[string]string{
		"spec.base_url": s.BaseURL, "spec.token_url": s.TokenURL, "spec.authorize_url": s.AuthorizeURL,
		"spec.revocation_url": s.RevocationURL, "spec.introspection_url": s.IntrospectionURL,
		"spec.device_authorization_url": s.DeviceAuthorizationURL,
	} {
		if u == "" {
			continue
		}
		if err := ValidateEndpointURL(u); err != nil {
			return brokererr.Invalid(field, "%v", err)
		}
	}
	if s.ClientID == "" || len(s.ClientID) > maxClientIDLen || !printable(s.ClientID) {
		return brokererr.Invalid("spec.client_id", "required, printable, at most %d bytes", maxClientIDLen)
	}
	if len(s.ClientSecret) > maxClientSecretLen || !printable(s.ClientSecret) {
		return brokererr.Invalid("spec.client_secret", "printable, at most %d bytes", maxClientSecretLen)
	}
	if s.InstanceURLDomain != "" && !domainName(s.InstanceURLDomain) {
		return brokererr.Invalid("spec.instance_url_domain", "a lowercase domain name with at least two labels, e.g. salesforce.mil")
	}
	switch s.ClientAuth {
	case ClientAuthDefault, ClientAuthSecretPost:
	case ClientAuthSecretBasic:
		if s.ProviderKind != ProviderOAuth2 {
			return brokererr.Invalid("spec.client_auth_method", "client_secret_basic is for generic OAuth 2.0 providers; Salesforce takes the secret as a form field")
		}
		if s.ClientSecret == "" {
			return brokererr.Invalid("spec.client_auth_method", "client_secret_basic needs a client secret")
		}
	default:
		return brokererr.Invalid("spec.client_auth_method", "unknown method")
	}
	switch s.PreviousAccessToken {
	case PreviousAccessDefault, PreviousAccessRevoked, PreviousAccessKept:
	default:
		return brokererr.Invalid("spec.previous_access_token", "revoked, kept or unset")
	}
	if len(s.Scopes) > maxScopes {
		return brokererr.Invalid("spec.scopes", "at most %d scopes", maxScopes)
	}
	for _, sc := range s.Scopes {
		if sc == "" || len(sc) > maxScopeLen || strings.ContainsAny(sc, " \"\\") || !printable(sc) {
			return brokererr.Invalid("spec.scopes", "each scope is 1-%d printable characters without spaces, quotes or backslashes", maxScopeLen)
		}
	}
	for field, d := range map[string]time.Duration{
		"spec.access_token_lifetime": s.AccessTokenLife, "spec.refresh_token_idle_timeout": s.RefreshIdle,
		"spec.refresh_token_max_lifetime": s.RefreshMaxLife, "spec.reuse_grace_period": s.ReuseGrace,
	} {
		if d < 0 || d > maxDuration {
			return brokererr.Invalid(field, "must be between 0 and %s", maxDuration)
		}
	}
	if s.AccessTokenLife != 0 && s.AccessTokenLife < 10*time.Second {
		return brokererr.Invalid("spec.access_token_lifetime", "at least 10s")
	}
	if s.RefreshIdle != 0 && s.RefreshIdle < time.Minute {
		return brokererr.Invalid("spec.refresh_token_idle_timeout", "at least 1m")
	}
	return nil
}

// domainName accepts lowercase DNS names of two labels or more: a bare
// top-level domain would let instance URLs point anywhere under it.
func domainName(s string) bool {
	labels := strings.Split(s, ".")
	if len(s) > 253 || len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' ||
			strings.Trim(l, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
			return false
		}
	}
	return true
}

func printable(s string) bool { return textcheck.Printable(s) }

// ValidateEndpointURL accepts https URLs, and http only on a loopback host
// (for tests and the dev command). Userinfo and fragments are refused.
func ValidateEndpointURL(raw string) error {
	if len(raw) > maxURLLen {
		return fmt.Errorf("longer than %d bytes", maxURLLen)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("not a URL")
	}
	if u.Host == "" || u.User != nil || u.Fragment != "" || u.Opaque != "" {
		return fmt.Errorf("must be an absolute URL with a host, no user info or fragment")
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if isLoopback(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("http is allowed only on loopback; use https")
	default:
		return fmt.Errorf("scheme must be https")
	}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Endpoint resolves the provider endpoints of a spec.
func (s Spec) Endpoint() provider.Endpoint {
	var ep provider.Endpoint
	if s.ProviderKind == ProviderSalesforce {
		ep = provider.SalesforceEndpoint(strings.TrimSuffix(s.BaseURL, "/"))
	} else {
		ep.Kind = provider.KindOAuth2
		if d := s.Discovered; d != nil {
			ep = provider.Endpoint{
				Kind: provider.KindOAuth2, TokenURL: d.TokenURL, AuthorizeURL: d.AuthorizeURL,
				RevocationURL: d.RevocationURL, IntrospectionURL: d.IntrospectionURL,
				DeviceAuthorizationURL: d.DeviceAuthorizationURL,
			}
		}
	}
	ep.InstanceURLDomain = s.InstanceURLDomain
	for dst, src := range map[*string]string{
		&ep.TokenURL: s.TokenURL, &ep.AuthorizeURL: s.AuthorizeURL,
		&ep.RevocationURL: s.RevocationURL, &ep.IntrospectionURL: s.IntrospectionURL,
		&ep.DeviceAuthorizationURL: s.DeviceAuthorizationURL,
	} {
		if src != "" {
			*dst = src
		}
	}
	return ep
}

// ClientCredentials are the spec's client; without a configured method, the
// one the provider's metadata suggests.
func (s Spec) ClientCredentials() provider.ClientCredentials {
	cc := provider.ClientCredentials{ClientID: s.ClientID, ClientSecret: s.ClientSecret, AuthMethod: s.ClientAuth.Provider()}
	if s.ClientAuth == ClientAuthDefault && s.Discovered != nil {
		cc.AuthMethod = s.Discovered.ClientAuth.Provider()
	}
	return cc
}

// AccessTokenLifetime is how long a token lives when the provider says
// nothing.
func (s Spec) AccessTokenLifetime() time.Duration {
	if s.AccessTokenLife > 0 {
		return s.AccessTokenLife
	}
	if s.ProviderKind == ProviderSalesforce {
		return DefaultSalesforceSessionTimeout
	}
	return DefaultAccessTokenLifetime
}

// GrantsRefreshToken reports whether Salesforce issues a refresh token for
// these scopes: only refresh_token (alias offline_access) or full do.
func GrantsRefreshToken(scopes []string) bool {
	for _, s := range scopes {
		switch s {
		case "refresh_token", "offline_access", "full":
			return true
		}
	}
	return false
}

// PreviousAccess says whether a credential's provider kills the previous
// access token when it rotates the refresh token (see the serving cutoff,
// broker/cutoff.go).
type PreviousAccess string

const (
	// PreviousAccessDefault decides by provider kind: Salesforce keeps the
	// previous access token; a generic provider is treated as killing it.
	PreviousAccessDefault PreviousAccess = ""
	// PreviousAccessRevoked: a rotation kills the previous access token
	// (ory/fosite, Ory Hydra).
	PreviousAccessRevoked PreviousAccess = "revoked"
	// PreviousAccessKept: the previous access token lives until it expires.
	PreviousAccessKept PreviousAccess = "kept"
)

// FlowScopes resolves a flow's scopes (the spec's unless overridden)
// and refuses, for Salesforce, scopes that cannot yield a refresh token:
// rotation only applies to flows that issue one, and the user should not go
// through a flow that is bound to fail. Errors:
// *brokererr.InvalidArgumentError.
func (spec Spec) FlowScopes(scopes []string) ([]string, error) {
	if len(scopes) == 0 {
		scopes = spec.Scopes
	}
	if spec.ProviderKind == ProviderSalesforce && !GrantsRefreshToken(scopes) {
		return nil, brokererr.Invalid("scopes", "Salesforce issues a refresh token only with the refresh_token (or offline_access) scope; add it")
	}
	if len(scopes) > 0 {
		check := spec
		check.Scopes = scopes
		if err := check.Validate(); err != nil {
			return nil, err
		}
	}
	return append([]string(nil), scopes...), nil
}
