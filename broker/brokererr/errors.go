// Package brokererr is the rotation logic's error vocabulary, shared by the
// rotation core and its parts (the notice log, ...): sentinel errors checked
// with errors.Is and small typed errors checked with errors.As. The
// transport maps each to one status (server/errors.go). Messages keep the "broker:" prefix callers know.
package brokererr

import (
	"errors"
	"fmt"
	"time"

	"github.com/rotavault/rotavault/provider"
)

// Sentinel errors of the rotation logic. They are wrapped with %w; check
// them with errors.Is. The transport maps each to one status code.
var (
	// ErrNotFound: no credential has this id.
	ErrNotFound = errors.New("broker: credential not found")
	// ErrAlreadyExists: a credential with this id exists.
	ErrAlreadyExists = errors.New("broker: credential already exists")
	// ErrReauthRequired: the credential has no usable token family (revoked,
	// or never installed). Only Reauthenticate helps.
	ErrReauthRequired = errors.New("broker: reauthentication required")
	// ErrConflict: a concurrent change won a check-and-set race and the
	// operation could not be adopted; retry it as a whole.
	ErrConflict = errors.New("broker: concurrent change")
	// ErrClientRejected: the provider refused the client itself (secret,
	// user, org), not the refresh token; the family is kept. An admin must
	// fix the credential.
	ErrClientRejected = errors.New("broker: the provider refused the client")
	// ErrClosed: the broker is shutting down.
	ErrClosed = errors.New("broker: closed")
	// ErrReuseGraceTooShort: a stored credential's reuse grace period is
	// too short for this server's refresh claim (a longer claim margin
	// than when it was set); it is not refreshed nor served until an admin
	// updates it.
	ErrReuseGraceTooShort = errors.New("broker: the credential's reuse grace period is too short for this server's refresh claim")
)

// InvalidArgumentError reports a request field that fails validation. Nothing
// was changed.
type InvalidArgumentError struct {
	Field  string
	Reason string
	// Code is a machine-readable reason for ErrorInfo, when the caller may
	// act on it (e.g. "MIN_LIFETIME_UNATTAINABLE"); empty otherwise.
	Code string
}

func (e *InvalidArgumentError) Error() string {
	return fmt.Sprintf("broker: invalid %s: %s", e.Field, e.Reason)
}

// Invalid returns an *InvalidArgumentError for field.
func Invalid(field, format string, args ...any) error {
	return &InvalidArgumentError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Components that can be unavailable.
const (
	ComponentProvider = "provider"
	ComponentStore    = "store"
)

// UnavailableError reports that the provider or the store could not be
// reached or answered "try later". Nothing was lost: retry after RetryAfter.
type UnavailableError struct {
	Component  string
	RetryAfter time.Duration
	Err        error
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("broker: %s unavailable: %v", e.Component, e.Err)
}

func (e *UnavailableError) Unwrap() error { return e.Err }

// StoreUnavailable wraps a store failure: retry after a second.
func StoreUnavailable(err error) error {
	return &UnavailableError{Component: ComponentStore, RetryAfter: time.Second, Err: err}
}

// RateLimitedError reports that rejected-token reports for a credential come
// faster than the broker lets them trigger refreshes.
type RateLimitedError struct {
	RetryAfter time.Duration
}

func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("broker: rejected-token reports rate-limited; retry after %s", e.RetryAfter.Round(time.Millisecond))
}

// ClientRejected is the caller's error for a client the provider refused
// (invalid_client) at what it was doing (doing: "when refreshing", …). It
// names the authentication method the request used: a server whose client
// allows only the other method answers invalid_client as for a wrong
// secret, and says which only in its error_description (logged, never
// passed on: provider text stays out of answers).
func ClientRejected(pe *provider.Error, doing string) error {
	return fmt.Errorf("%w (%s): %s", ErrClientRejected, pe.Code, ClientRejectedDetail(pe, doing))
}

// ClientRejectedDetail is ClientRejected's advice without the sentinel, for
// a flow's stored outcome.
func ClientRejectedDetail(pe *provider.Error, doing string) string {
	how := "as form fields (client_secret_post)"
	switch pe.ClientAuth {
	case provider.AuthSecretBasic:
		how = "with HTTP Basic (client_secret_basic)"
	case provider.AuthDefault:
		how = "(no credentials sent)"
	}
	return fmt.Sprintf("the client authenticated %s %s; check the client id and secret, that the provider's client allows this method (--client-auth-method, or --issuer to take it from the provider's metadata; the provider's own description is in the server log), and the user and org at the provider", how, doing)
}
