package client

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrReauthenticationRequired reports that the credential's token family is
// revoked or was never installed: no retry helps until an operator runs
// Reauthenticate. Check with errors.Is; errors.As with
// *ReauthenticationRequiredError tells which credential.
var ErrReauthenticationRequired = errors.New("rotavault: reauthentication required")

// ErrClosed is returned by calls on a Client after Close, and by Token calls
// that Close cut short.
var ErrClosed = errors.New("rotavault: client closed")

// ReauthenticationRequiredError is the error of a Token call for a
// credential whose token family is revoked or was never installed (the
// server's FAILED_PRECONDITION with reason REAUTHENTICATION_REQUIRED). It
// matches ErrReauthenticationRequired with errors.Is, and unwraps to the
// gRPC status error, so status.Code(err) is codes.FailedPrecondition.
type ReauthenticationRequiredError struct {
	CredentialID string
	// Err is the server's status error.
	Err error
}

func (e *ReauthenticationRequiredError) Error() string {
	return fmt.Sprintf("rotavault: credential %q needs reauthentication: its token family is revoked or was never installed", e.CredentialID)
}

// Is reports whether target is ErrReauthenticationRequired.
func (e *ReauthenticationRequiredError) Is(target error) bool {
	return target == ErrReauthenticationRequired
}

// Unwrap returns the server's status error.
func (e *ReauthenticationRequiredError) Unwrap() error { return e.Err }

// The google.rpc.ErrorInfo reasons (domain "rotavault") the Client acts on.
const (
	reasonReauthenticationRequired = "REAUTHENTICATION_REQUIRED"
	reasonRejectionRateLimited     = "REJECTION_RATE_LIMITED"
	errorDomain                    = "rotavault"
)

// details are what a status error says beyond its code.
type details struct {
	reason     string
	retryDelay time.Duration // 0 when the server sent no RetryInfo
}

func detailsOf(err error) details {
	var d details
	st, ok := status.FromError(err)
	if !ok {
		return d
	}
	for _, x := range st.Details() {
		switch x := x.(type) {
		case *errdetails.ErrorInfo:
			if x.GetDomain() == errorDomain || x.GetDomain() == "" {
				d.reason = x.GetReason()
			}
		case *errdetails.RetryInfo:
			if x.GetRetryDelay().IsValid() {
				d.retryDelay = max(x.GetRetryDelay().AsDuration(), 0)
			}
		}
	}
	return d
}

// wrapError turns a GetAccessToken error into the Client's error for
// credentialID.
func wrapError(credentialID string, err error) error {
	if status.Code(err) == codes.FailedPrecondition && detailsOf(err).reason == reasonReauthenticationRequired {
		return &ReauthenticationRequiredError{CredentialID: credentialID, Err: err}
	}
	return fmt.Errorf("rotavault: token for %q: %w", credentialID, err)
}
