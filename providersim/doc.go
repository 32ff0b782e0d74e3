// Package providersim is an in-memory OAuth 2.0 authorization server that
// behaves like Salesforce's, for tests and for `rotavault dev`.
//
// It serves, on a loopback listener over plain HTTP, the Salesforce endpoints
// Rotavault talks to: /services/oauth2/authorize (auto-approving consent),
// /services/oauth2/token (authorization_code with PKCE, refresh_token),
// /services/oauth2/revoke, /services/oauth2/introspect and a protected
// /services/data/ resource. The token endpoint also runs Salesforce's device
// flow; /oauth2/device_authorization runs RFC 8628's, and /setup/connect is
// the verification page (tests approve with ApproveDevice or DenyDevice). Wire formats and error texts follow Salesforce's
// documentation: no expires_in, issued_at in milliseconds as a string, an
// HMAC signature over id+issued_at, and "expired access/refresh token" for
// every dead refresh token.
//
// Refresh Token Rotation is on by default: every refresh returns a new
// refresh token and supersedes the old one; presenting a superseded token
// revokes the whole token family (its current refresh token and all its
// access tokens), with no grace period, as Salesforce does. Config.ReuseGrace
// models providers that tolerate an immediate retry (Okta, Hydra, Cognito).
//
// Tests drive failure modes through the Server: InjectFailure (unavailable,
// rate limited, server error, lost response after rotation, hang),
// SetLatency, CorruptSignatures, EchoRequests (error answers that echo the
// request, secrets and all, in one of many encodings) and RevokeFamilyOf; they observe through
// Stats and WaitForTokenRequests instead of sleeping.
//
// Tokens are never logged. The simulator keeps them only as SHA-256 digests.
package providersim
