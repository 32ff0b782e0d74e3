package provider_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/rotavault/rotavault/internal/fositeserver"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/providersim"
)

// fosite publishes RFC 8414 metadata: Discover finds it at the well-known
// URL and takes the endpoints and Basic (listed) from it.
func TestDiscoverFositeMetadata(t *testing.T) {
	fs, err := fositeserver.Start(fositeserver.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fs.Close() })
	m, err := provider.New(nil).Discover(context.Background(), fs.URL())
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	want := provider.Endpoint{Kind: provider.KindOAuth2, TokenURL: fs.TokenURL(), AuthorizeURL: fs.AuthorizeURL(),
		RevocationURL: fs.RevocationURL(), IntrospectionURL: fs.IntrospectionURL()}
	if m.Endpoint() != want || m.URL != fs.MetadataURL() || m.Issuer != fs.URL() {
		t.Fatalf("metadata %+v, want endpoints %+v from %s", m, want, fs.MetadataURL())
	}
	if m.AuthMethod() != provider.AuthSecretBasic {
		t.Fatalf("auth method %v, want client_secret_basic (listed)", m.AuthMethod())
	}
}

// The simulator, like Salesforce, publishes only an OpenID Connect
// document: Discover falls back to it after RFC 8414's URL answers 404.
func TestDiscoverFallsBackToOpenIDConfiguration(t *testing.T) {
	sim, _, _ := setupSimTest(t, providersim.Config{})
	m, err := provider.New(nil).Discover(context.Background(), sim.URL())
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	if m.URL != sim.URL()+providersim.MetadataPath || m.TokenEndpoint != sim.URL()+"/services/oauth2/token" ||
		m.DeviceAuthorizationEndpoint != sim.URL()+providersim.DeviceAuthorizationPath {
		t.Fatalf("metadata %+v, want the simulator's OpenID document", m)
	}
}

// Documents that would send our secret elsewhere, or make us hold too much,
// are refused.
func TestDiscoverRefusesUnsafeDocuments(t *testing.T) {
	for _, tt := range []struct {
		name     string
		override map[string]any
		why      string
	}{
		{"another issuer (RFC 8414 §3.3)", map[string]any{"issuer": "http://127.0.0.1:1"}, "names issuer"},
		{"token endpoint over http off loopback", map[string]any{"token_endpoint": "http://idp.example/token"}, "token_endpoint is not"},
		{"introspection endpoint not a URL", map[string]any{"introspection_endpoint": "::"}, "introspection_endpoint is not"},
		{"no token endpoint", map[string]any{"token_endpoint": nil}, "no token_endpoint"},
		{"larger than 64 KiB", map[string]any{"padding": strings.Repeat("a", 65<<10)}, "larger than"},
		{"too many auth methods", map[string]any{"token_endpoint_auth_methods_supported": slices.Repeat([]string{"client_secret_basic"}, 33)}, "more than 32"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sim, _, _ := setupSimTest(t, providersim.Config{})
			sim.SetMetadataOverride(tt.override)
			_, err := provider.New(nil).Discover(context.Background(), sim.URL())
			if !errors.Is(err, provider.ErrDiscovery) || !strings.Contains(err.Error(), tt.why) {
				t.Fatalf("Discover: %v, want ErrDiscovery saying %q", err, tt.why)
			}
		})
	}
}

// A metadata URL that redirects is not followed: the document must come
// from the issuer's own host.
func TestDiscoverDoesNotFollowRedirects(t *testing.T) {
	srv := httptest.NewServer(http.RedirectHandler("http://127.0.0.1:1/elsewhere", http.StatusFound))
	t.Cleanup(srv.Close)
	if _, err := provider.New(nil).Discover(context.Background(), srv.URL); !errors.Is(err, provider.ErrDiscovery) || !strings.Contains(err.Error(), "HTTP 302") {
		t.Fatalf("Discover: %v, want ErrDiscovery for the redirect", err)
	}
}

func TestMetadataURLsAndIssuerRules(t *testing.T) {
	got, err := provider.MetadataURLs("https://idp.example/tenant1")
	want := []string{"https://idp.example/.well-known/oauth-authorization-server/tenant1", "https://idp.example/tenant1/.well-known/openid-configuration"}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("MetadataURLs = %q, %v; want %q", got, err, want)
	}
	for _, bad := range []string{"http://idp.example", "https://idp.example/?tenant=1", "https://idp.example/#x", "idp.example"} {
		if _, err := provider.MetadataURLs(bad); !errors.Is(err, provider.ErrDiscovery) {
			t.Errorf("MetadataURLs(%q): %v, want refused", bad, err)
		}
	}
}

// RFC 6749 §2.3.1: Basic is preferred whenever the provider supports it,
// and an absent list means Basic (RFC 8414 §2).
func TestMetadataAuthMethodPrefersBasic(t *testing.T) {
	for _, tt := range []struct {
		listed []string
		want   provider.AuthMethod
	}{
		{nil, provider.AuthSecretBasic},
		{[]string{"client_secret_post", "client_secret_basic"}, provider.AuthSecretBasic},
		{[]string{"client_secret_post"}, provider.AuthSecretPost},
		{[]string{"private_key_jwt"}, provider.AuthDefault},
	} {
		if got := (provider.Metadata{TokenEndpointAuthMethods: tt.listed}).AuthMethod(); got != tt.want {
			t.Errorf("listed %q: %v, want %v", tt.listed, got, tt.want)
		}
	}
}

// A metadata endpoint that never answers does not hold the caller: the
// fetch has a bound of its own (10 s), whatever the caller's context.
func TestDiscoverIsBoundedInTime(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	_, err := provider.New(&http.Client{}).Discover(context.Background(), srv.URL)
	if !errors.Is(err, provider.ErrDiscovery) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Discover at a silent endpoint: %v, want ErrDiscovery after its deadline", err)
	}
}
