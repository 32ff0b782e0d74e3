package server

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/rotavault/rotavault/broker/authflow"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/notice"
	"github.com/rotavault/rotavault/broker/option"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of Rotavault's errors.
const ErrorDomain = "rotavault"

// Machine-readable reasons in google.rpc.ErrorInfo, for clients that must act.
const (
	ReasonReauthenticationRequired = "REAUTHENTICATION_REQUIRED"
	ReasonProviderUnavailable      = "PROVIDER_UNAVAILABLE"
	ReasonStoreUnavailable         = "STORE_UNAVAILABLE"
	ReasonRejectionRateLimited     = "REJECTION_RATE_LIMITED"
	ReasonCursorExpired            = "CURSOR_EXPIRED"
	ReasonSubscriberTooSlow        = "SUBSCRIBER_TOO_SLOW"
	ReasonProviderRejectedClient   = "PROVIDER_REJECTED_CLIENT"
	// A reauthentication flow ended without a new family; start a new one.
	ReasonAuthorizationDenied  = "AUTHORIZATION_DENIED"
	ReasonAuthorizationExpired = "AUTHORIZATION_EXPIRED"
	ReasonAuthorizationFailed  = "AUTHORIZATION_FAILED"
	// A flow asked for the server's own callback, which is not configured.
	ReasonCallbackNotConfigured = "CALLBACK_NOT_CONFIGURED"
	// Too many authorization flows are in progress; retry later.
	ReasonTooManyFlows = "TOO_MANY_FLOWS"
	// The identity already runs as many watch replays from the store as it
	// may; retry shortly.
	ReasonTooManyReplays = "TOO_MANY_REPLAYS"
	// A credential's reuse grace period is too short for a refresh claim
	// to fit inside it (broker.ReuseGraceTooShort, INVALID_ARGUMENT where
	// it is set; FAILED_PRECONDITION on calls for a stored credential whose
	// grace this server's claim margin outgrew).
	ReasonReuseGraceTooShort = option.ReuseGraceTooShort
)

// replayRetry is when a watch refused for too many replays may try again:
// a replay of the whole retention takes a few hundred store reads.
const replayRetry = 2 * time.Second

// toStatus is the one mapping from the rotation logic's errors to gRPC
// statuses. Messages never carry tokens, secrets, provider bodies or
// backend URLs: those details go to the server log only.
func toStatus(ctx context.Context, log *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	var (
		inv   *brokererr.InvalidArgumentError
		unav  *brokererr.UnavailableError
		limit *brokererr.RateLimitedError
		authz *authflow.AuthorizationError
	)
	switch {
	case errors.As(err, &inv):
		st := status.New(codes.InvalidArgument, inv.Error())
		details := []protoadapt.MessageV1{&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: inv.Field, Description: inv.Reason}}}}
		if inv.Code != "" {
			details = append(details, &errdetails.ErrorInfo{Reason: inv.Code, Domain: ErrorDomain})
		}
		return withDetails(st, details...)
	case errors.Is(err, brokererr.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, brokererr.ErrAlreadyExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, brokererr.ErrReauthRequired):
		return withDetails(status.New(codes.FailedPrecondition, err.Error()),
			&errdetails.ErrorInfo{Reason: ReasonReauthenticationRequired, Domain: ErrorDomain})
	case errors.Is(err, brokererr.ErrReuseGraceTooShort):
		return withDetails(status.New(codes.FailedPrecondition, err.Error()),
			&errdetails.ErrorInfo{Reason: ReasonReuseGraceTooShort, Domain: ErrorDomain})
	case errors.Is(err, brokererr.ErrClientRejected):
		return withDetails(status.New(codes.FailedPrecondition, err.Error()),
			&errdetails.ErrorInfo{Reason: ReasonProviderRejectedClient, Domain: ErrorDomain})
	case errors.Is(err, notice.ErrCursorExpired):
		return withDetails(status.New(codes.OutOfRange, err.Error()),
			&errdetails.ErrorInfo{Reason: ReasonCursorExpired, Domain: ErrorDomain})
	case errors.Is(err, notice.ErrSubscriberTooSlow):
		return withDetails(status.New(codes.Aborted, err.Error()),
			&errdetails.ErrorInfo{Reason: ReasonSubscriberTooSlow, Domain: ErrorDomain})
	case errors.As(err, &authz):
		return withDetails(status.New(codes.FailedPrecondition, authz.Error()),
			&errdetails.ErrorInfo{Reason: authorizationReason(authz.Reason), Domain: ErrorDomain})
	case errors.Is(err, authflow.ErrCallbackNotConfigured):
		return withDetails(status.New(codes.FailedPrecondition, err.Error()),
			&errdetails.ErrorInfo{Reason: ReasonCallbackNotConfigured, Domain: ErrorDomain})
	case errors.Is(err, brokererr.ErrConflict):
		return status.Error(codes.Aborted, err.Error())
	case errors.As(err, &unav):
		log.WarnContext(ctx, "request failed: dependency unavailable", "component", unav.Component, "err", unav.Err)
		reason, msg := ReasonProviderUnavailable, "the OAuth provider is unavailable; retry later"
		if unav.Component == brokererr.ComponentStore {
			reason, msg = ReasonStoreUnavailable, "the credential store is unavailable; retry later"
		}
		return withDetails(status.New(codes.Unavailable, msg),
			&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain},
			&errdetails.RetryInfo{RetryDelay: durationpb.New(unav.RetryAfter)})
	case errors.As(err, &limit):
		return withDetails(status.New(codes.ResourceExhausted, limit.Error()),
			&errdetails.ErrorInfo{Reason: ReasonRejectionRateLimited, Domain: ErrorDomain},
			&errdetails.RetryInfo{RetryDelay: durationpb.New(limit.RetryAfter)})
	case errors.Is(err, authflow.ErrTooManyFlows):
		return withDetails(status.New(codes.ResourceExhausted, "too many authorization flows in progress; finish or wait out pending ones (finished flows are forgotten after 10 minutes)"),
			&errdetails.ErrorInfo{Reason: ReasonTooManyFlows, Domain: ErrorDomain},
			&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Minute)})
	case errors.Is(err, notice.ErrTooManyReplays):
		return withDetails(status.New(codes.ResourceExhausted, "too many watch replays from far back at once for this identity; retry shortly"),
			&errdetails.ErrorInfo{Reason: ReasonTooManyReplays, Domain: ErrorDomain},
			&errdetails.RetryInfo{RetryDelay: durationpb.New(replayRetry)})
	case errors.Is(err, brokererr.ErrClosed):
		return status.Error(codes.Unavailable, "the server is shutting down")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	default:
		log.ErrorContext(ctx, "internal error", "err", err)
		return status.Error(codes.Internal, "internal error")
	}
}

func withDetails(st *status.Status, details ...protoadapt.MessageV1) error {
	withD, err := st.WithDetails(details...)
	if err != nil {
		return st.Err()
	}
	return withD.Err()
}

func authorizationReason(f authflow.FlowFailure) string {
	switch f {
	case authflow.FlowDenied:
		return ReasonAuthorizationDenied
	case authflow.FlowExpired:
		return ReasonAuthorizationExpired
	default:
		return ReasonAuthorizationFailed
	}
}
