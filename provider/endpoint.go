package provider

import (
	"fmt"
	"log/slog"
	"strings"
)

// Kind selects a provider's dialect. The values match the ProviderKind enum
// of the rotavault.v1 API; the zero value is unspecified and refused by every
// call that talks to a provider.
type Kind int

const (
	// KindSalesforce: no expires_in, issued_at in milliseconds, instance_url,
	// and an HMAC signature over id+issued_at that Refresh and ExchangeCode
	// check when a client secret is set.
	KindSalesforce Kind = iota + 1
	// KindOAuth2: any other RFC 6749 authorization server.
	KindOAuth2
)

// String returns "salesforce", "oauth2" or "unspecified".
func (k Kind) String() string {
	switch k {
	case KindSalesforce:
		return "salesforce"
	case KindOAuth2:
		return "oauth2"
	default:
		return fmt.Sprintf("unspecified(%d)", int(k))
	}
}

// Endpoint names a provider's endpoints. Only the URL an operation needs must
// be set: TokenURL for Refresh and ExchangeCode, AuthorizeURL for AuthCodeURL,
// RevocationURL for Revoke, IntrospectionURL for Introspect,
// DeviceAuthorizationURL for StartDeviceAuthorization with KindOAuth2
// (Salesforce starts device flows at TokenURL). Each must be an absolute http
// or https URL.
type Endpoint struct {
	Kind             Kind
	TokenURL         string
	AuthorizeURL     string
	RevocationURL    string
	IntrospectionURL string
	// DeviceAuthorizationURL is RFC 8628's device authorization endpoint.
	DeviceAuthorizationURL string
	// InstanceURLDomain is a domain (e.g. "salesforce.mil") whose hosts a
	// token's instance_url may name, besides *.salesforce.com,
	// *.force.com and TokenURL's host; empty for none. A token naming any
	// other host is refused.
	InstanceURLDomain string
}

// SalesforceEndpoint returns the endpoints under a Salesforce My Domain or
// login host (https://acme.my.salesforce.com, https://login.salesforce.com,
// https://test.salesforce.com): baseURL + /services/oauth2/{token, authorize,
// revoke, introspect}. A trailing slash on baseURL is ignored.
//
// Salesforce answers introspection on the instance URL too; set
// IntrospectionURL from Token.InstanceURL to use it.
func SalesforceEndpoint(baseURL string) Endpoint {
	base := strings.TrimRight(baseURL, "/") + "/services/oauth2/"
	return Endpoint{
		Kind:             KindSalesforce,
		TokenURL:         base + "token",
		AuthorizeURL:     base + "authorize",
		RevocationURL:    base + "revoke",
		IntrospectionURL: base + "introspect",
	}
}

// ClientCredentials identify the OAuth client (Salesforce: the consumer key
// and secret). ClientSecret may be empty for public clients. AuthMethod says
// how they are sent; see AuthMethod.
//
// Printing or logging a ClientCredentials never shows the secret: String,
// GoString, Format and LogValue redact it.
type ClientCredentials struct {
	ClientID     string
	ClientSecret string
	AuthMethod   AuthMethod
}

// AuthMethod is how a client authenticates at the provider's endpoints
// (RFC 6749 §2.3.1).
type AuthMethod int

const (
	// AuthDefault: client_secret_post, except generic providers'
	// introspection, which uses HTTP Basic (the method RFC 6749 requires
	// servers to support; some introspection endpoints accept no other).
	AuthDefault AuthMethod = iota
	// AuthSecretPost: client_id and client_secret as form fields.
	AuthSecretPost
	// AuthSecretBasic: HTTP Basic with the form-encoded client id and
	// secret. Without a secret the client is public and posts its id.
	AuthSecretBasic
)

// String returns the RFC 8414 name of the method ("client_secret_post",
// "client_secret_basic") or "default".
func (m AuthMethod) String() string {
	switch m {
	case AuthSecretPost:
		return "client_secret_post"
	case AuthSecretBasic:
		return "client_secret_basic"
	default:
		return "default"
	}
}

// method is the AuthMethod a clientAuth sends.
func (a clientAuth) method() AuthMethod {
	if a == authBasic {
		return AuthSecretBasic
	}
	return AuthSecretPost
}

// wire returns how to send the credentials where def is the default.
func (cc ClientCredentials) wire(def clientAuth) clientAuth {
	switch {
	case cc.AuthMethod == AuthSecretBasic && cc.ClientSecret != "":
		return authBasic
	case cc.AuthMethod == AuthSecretBasic, cc.AuthMethod == AuthSecretPost:
		return authPost
	default:
		return def
	}
}

// String returns the client id and whether a secret is set.
func (cc ClientCredentials) String() string {
	return fmt.Sprintf("ClientCredentials{ClientID: %q, ClientSecret: %s}", cc.ClientID, redacted(cc.ClientSecret))
}

// GoString is String, so %#v redacts too.
func (cc ClientCredentials) GoString() string { return "provider." + cc.String() }

// Format makes every fmt verb print the redacted form; without it %d or %x
// would print the fields, secret included.
func (cc ClientCredentials) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		_, _ = fmt.Fprint(f, cc.GoString())
		return
	}
	_, _ = fmt.Fprint(f, cc.String())
}

// LogValue logs the client id and whether a secret is set.
func (cc ClientCredentials) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("client_id", cc.ClientID),
		slog.Bool("client_secret_set", cc.ClientSecret != ""),
	)
}

// redacted stands in for a secret in printed values.
func redacted(secret string) string {
	if secret == "" {
		return "[none]"
	}
	return "[REDACTED]"
}
