package broker

import "github.com/rotavault/rotavault/broker/brokererr"

// Sentinel errors of the rotation logic (see package fault). They are
// wrapped with %w; check them with errors.Is. The transport maps each to
// one status code.
var (
	// ErrNotFound: no credential has this id.
	ErrNotFound = brokererr.ErrNotFound
	// ErrAlreadyExists: a credential with this id exists.
	ErrAlreadyExists = brokererr.ErrAlreadyExists
	// ErrReauthRequired: the credential has no usable token family.
	ErrReauthRequired = brokererr.ErrReauthRequired
	// ErrConflict: a concurrent change won; retry the operation as a whole.
	ErrConflict = brokererr.ErrConflict
	// ErrClientRejected: the provider refused the client itself.
	ErrClientRejected = brokererr.ErrClientRejected
	// ErrClosed: the broker is shutting down.
	ErrClosed = brokererr.ErrClosed
)

// InvalidArgumentError reports a request field that fails validation.
type InvalidArgumentError = brokererr.InvalidArgumentError

// UnavailableError reports that the provider or the store could not be
// reached; retry after RetryAfter.
type UnavailableError = brokererr.UnavailableError

// RateLimitedError reports that rejected-token reports come too fast.
type RateLimitedError = brokererr.RateLimitedError

// Components that can be unavailable.
const (
	ComponentProvider = brokererr.ComponentProvider
	ComponentStore    = brokererr.ComponentStore
)

func invalid(field, format string, args ...any) error {
	return brokererr.Invalid(field, format, args...)
}
