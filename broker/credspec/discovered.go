package credspec

import (
	"context"
	"reflect"
	"slices"
	"time"

	"github.com/rotavault/rotavault/provider"
)

// Discoverer fetches an issuer's metadata. *provider.Client implements it;
// the broker uses its Config.Provider when it does.
type Discoverer interface {
	Discover(ctx context.Context, issuer string) (provider.Metadata, error)
}

// DiscoveredMetadata is what an issuer's metadata document said, as stored
// with the credential.
type DiscoveredMetadata struct {
	Issuer                 string `json:"issuer"`
	URL                    string `json:"url"`
	TokenURL               string `json:"token_url,omitempty"`
	AuthorizeURL           string `json:"authorize_url,omitempty"`
	RevocationURL          string `json:"revocation_url,omitempty"`
	IntrospectionURL       string `json:"introspection_url,omitempty"`
	DeviceAuthorizationURL string `json:"device_authorization_url,omitempty"`
	// TokenEndpointAuthMethods as published; nil when absent (RFC 8414:
	// client_secret_basic).
	TokenEndpointAuthMethods []string `json:"token_endpoint_auth_methods,omitempty"`
	// ClientAuth is the method chosen from them (Basic when listed).
	ClientAuth ClientAuthMethod `json:"client_auth_method,omitempty"`
	// FetchedAt is when this document was fetched; an unchanged document
	// fetched again is not written, so it is when it last changed.
	FetchedAt time.Time `json:"fetched_at"`
}

// Clone returns a copy that shares nothing with d.
func (d DiscoveredMetadata) Clone() DiscoveredMetadata {
	d.TokenEndpointAuthMethods = slices.Clone(d.TokenEndpointAuthMethods)
	return d
}

// SameDocument reports whether a and b say the same, whenever fetched.
func SameDocument(a, b *DiscoveredMetadata) bool {
	if a == nil || b == nil {
		return a == b
	}
	x, y := *a, *b
	x.FetchedAt, y.FetchedAt = time.Time{}, time.Time{}
	return reflect.DeepEqual(x, y)
}

// FromMetadata is the stored form of a metadata document fetched at now.
func FromMetadata(m provider.Metadata, now time.Time) *DiscoveredMetadata {
	return &DiscoveredMetadata{
		Issuer: m.Issuer, URL: m.URL,
		TokenURL: m.TokenEndpoint, AuthorizeURL: m.AuthorizationEndpoint,
		RevocationURL: m.RevocationEndpoint, IntrospectionURL: m.IntrospectionEndpoint,
		DeviceAuthorizationURL:   m.DeviceAuthorizationEndpoint,
		TokenEndpointAuthMethods: slices.Clone(m.TokenEndpointAuthMethods),
		ClientAuth:               ClientAuthMethod(m.AuthMethod()),
		FetchedAt:                now.UTC(),
	}
}
