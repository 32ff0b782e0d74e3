package fositeserver

import (
	"context"
	"fmt"
	"slices"

	"github.com/ory/fosite"
)

// clientScopes are the scopes every registered client may request. fosite
// issues a refresh token only when offline or offline_access is granted.
func clientScopes() []string {
	return []string{"openid", "offline", "offline_access", "api"}
}

// AddClient registers, or replaces, a confidential client that authenticates
// at the token and revocation endpoints with client_secret_post (client_id
// and client_secret in the form body; HTTP Basic is refused), may use the
// authorization_code and refresh_token grants with response type code, and
// may request the scopes openid, offline, offline_access and api. Redirect
// URIs must be registered exactly; for http://127.0.0.1 ones fosite accepts
// any port (RFC 8252).
//
// It is safe for concurrent use. It panics if id is empty or secret is
// longer than bcrypt's 72 bytes: both are mistakes in the calling test.
func (s *Server) AddClient(id, secret string, redirectURIs []string) {
	if id == "" {
		panic("fositeserver: AddClient: empty client id")
	}
	hash, err := s.fositeCfg.GetSecretsHasher(context.Background()).Hash(context.Background(), []byte(secret))
	if err != nil {
		panic(fmt.Sprintf("fositeserver: AddClient %q: hashing the client secret: %v", id, err))
	}
	client := &fosite.DefaultOpenIDConnectClient{
		DefaultClient: &fosite.DefaultClient{
			ID:            id,
			Secret:        hash,
			RedirectURIs:  slices.Clone(redirectURIs),
			GrantTypes:    []string{"authorization_code", "refresh_token"},
			ResponseTypes: []string{"code"},
			Scopes:        clientScopes(),
		},
		TokenEndpointAuthMethod: s.authMethod,
	}

	// The memory store's own client mutex is unexported; every reader of
	// Clients runs under fositeMu.
	s.fositeMu.Lock()
	defer s.fositeMu.Unlock()
	s.store.Clients[id] = client
}
