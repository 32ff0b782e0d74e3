package credspec

import "github.com/rotavault/rotavault/broker/brokererr"

// Field names a field of Spec an update may change.
type Field string

// Fields of Spec, by their API names.
const (
	FieldBaseURL          Field = "base_url"
	FieldTokenURL         Field = "token_url"
	FieldAuthorizeURL     Field = "authorize_url"
	FieldRevocationURL    Field = "revocation_url"
	FieldIntrospectionURL Field = "introspection_url"
	FieldClientID         Field = "client_id"
	FieldClientSecret     Field = "client_secret"
	FieldScopes           Field = "scopes"
	FieldAccessTokenLife  Field = "access_token_lifetime"
	FieldRefreshIdle      Field = "refresh_token_idle_timeout"
	FieldRefreshMaxLife   Field = "refresh_token_max_lifetime"
	FieldReuseGrace       Field = "reuse_grace_period"

	// FieldDeviceAuthorizationURL is RFC 8628's endpoint (generic providers).
	FieldDeviceAuthorizationURL Field = "device_authorization_url"
	// FieldClientAuthMethod is how the client authenticates.
	FieldClientAuthMethod Field = "client_auth_method"
	// FieldPreviousAccessToken says whether a rotation kills the previous
	// access token.
	FieldPreviousAccessToken Field = "previous_access_token"
	// FieldIssuer is the provider's issuer, whose metadata is discovered.
	FieldIssuer Field = "issuer"
)

// Apply copies field f of src into dst. Errors: *brokererr.InvalidArgumentError
// for a field that cannot change or is unknown.
func Apply(dst *Spec, src Spec, f Field) error {
	switch f {
	case FieldBaseURL:
		dst.BaseURL = src.BaseURL
	case FieldTokenURL:
		dst.TokenURL = src.TokenURL
	case FieldAuthorizeURL:
		dst.AuthorizeURL = src.AuthorizeURL
	case FieldRevocationURL:
		dst.RevocationURL = src.RevocationURL
	case FieldIntrospectionURL:
		dst.IntrospectionURL = src.IntrospectionURL
	case FieldDeviceAuthorizationURL:
		dst.DeviceAuthorizationURL = src.DeviceAuthorizationURL
	case FieldClientAuthMethod:
		dst.ClientAuth = src.ClientAuth
	case FieldIssuer:
		dst.Issuer = src.Issuer
	case FieldClientID:
		dst.ClientID = src.ClientID
	case FieldClientSecret:
		dst.ClientSecret = src.ClientSecret
	case FieldScopes:
		dst.Scopes = append([]string(nil), src.Scopes...)
	case FieldAccessTokenLife:
		dst.AccessTokenLife = src.AccessTokenLife
	case FieldRefreshIdle:
		dst.RefreshIdle = src.RefreshIdle
	case FieldRefreshMaxLife:
		dst.RefreshMaxLife = src.RefreshMaxLife
	case FieldReuseGrace:
		dst.ReuseGrace = src.ReuseGrace
	case FieldPreviousAccessToken:
		dst.PreviousAccessToken = src.PreviousAccessToken
	case "provider_kind":
		return brokererr.Invalid("update_mask", "provider_kind cannot change; create a new credential")
	default:
		return brokererr.Invalid("update_mask", "unknown field %q", string(f))
	}
	return nil
}
