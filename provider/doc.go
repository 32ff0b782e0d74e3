// Package provider is Rotavault's client for OAuth 2.0 authorization servers:
// it calls a provider's token, authorize, revoke and introspect endpoints, for
// Salesforce and for generic servers (Okta, Auth0, Ory Hydra, Keycloak,
// ory/fosite). It is the only package that speaks OAuth wire formats.
//
// The package never retries. Every failure is an *Error whose Outcome tells
// the caller whether the provider may have processed the request: with
// refresh token rotation a refresh that was processed but whose answer was
// lost has already killed the refresh token that was sent, and retrying it
// blindly can make the provider revoke the whole token family. The caller
// decides what to do from Outcome, Permanent and RetryAfter.
//
// No token, client secret, authorization code or PKCE verifier ever appears
// in an error message, and Token and ClientCredentials redact them when
// printed or logged.
package provider
