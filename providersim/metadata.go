package providersim

import (
	"maps"
	"net/http"
)

// MetadataPath is where the simulator publishes its OpenID Connect
// discovery document, as Salesforce does under each My Domain and login
// host. It has no RFC 8414 document, so clients fall back to this one.
const MetadataPath = "/.well-known/openid-configuration"

// SetMetadataOverride replaces fields of the metadata document (a nil
// value removes the field), so tests can serve a changed, wrong or hostile
// document. nil restores the simulator's own.
func (s *Server) SetMetadataOverride(fields map[string]any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.metadataOverride = maps.Clone(fields)
}

// handleMetadata serves the discovery document: the issuer (URL()), the
// endpoints and the client authentication methods Salesforce lists.
func (s *Server) handleMetadata(w http.ResponseWriter, _ *http.Request) {
	doc := map[string]any{
		"issuer":                                s.url,
		"authorization_endpoint":                s.url + "/services/oauth2/authorize",
		"token_endpoint":                        s.url + "/services/oauth2/token",
		"revocation_endpoint":                   s.url + "/services/oauth2/revoke",
		"introspection_endpoint":                s.url + "/services/oauth2/introspect",
		"device_authorization_endpoint":         s.url + DeviceAuthorizationPath,
		"response_types_supported":              []string{"code"},
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "client_secret_basic", "private_key_jwt"},
	}
	s.mu.Lock()
	for k, v := range s.metadataOverride {
		if v == nil {
			delete(doc, k)
			continue
		}
		doc[k] = v
	}
	s.mu.Unlock()
	jsonResponse(http.StatusOK, doc).write(w)
}
