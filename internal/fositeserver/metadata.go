package fositeserver

import (
	"encoding/json"
	"net/http"
)

// metadataPath is RFC 8414's well-known path for an issuer without a path.
const metadataPath = "/.well-known/oauth-authorization-server"

// MetadataURL returns the URL of the server's RFC 8414 metadata document.
// Its issuer is URL().
func (s *Server) MetadataURL() string { return s.url + metadataPath }

// handleMetadata serves the authorization server metadata (RFC 8414 §2):
// the issuer, the endpoints and the client authentication methods fosite
// accepts at its token endpoint (each client allows one of them; see
// Config.TokenEndpointAuthMethod).
func (s *Server) handleMetadata(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"issuer":                                s.url,
		"token_endpoint":                        s.TokenURL(),
		"authorization_endpoint":                s.AuthorizeURL(),
		"revocation_endpoint":                   s.RevocationURL(),
		"introspection_endpoint":                s.IntrospectionURL(),
		"grant_types_supported":                 []string{"authorization_code", "refresh_token"},
		"response_types_supported":              []string{"code"},
		"code_challenge_methods_supported":      []string{"S256"},
		"token_endpoint_auth_methods_supported": []string{"client_secret_basic", "client_secret_post"},
	})
}
