package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/rotavault/rotavault/broker/authflow"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/notice"
	"github.com/rotavault/rotavault/broker/option"
)

func TestToStatus(t *testing.T) {
	secretish := errors.New("dial tcp https://vault.internal:8200: token s.abcdef refused")
	cases := []struct {
		name   string
		err    error
		code   codes.Code
		reason string
		retry  time.Duration
	}{
		{"not found", fmt.Errorf("%w: x", brokererr.ErrNotFound), codes.NotFound, "", 0},
		{"exists", fmt.Errorf("%w: x", brokererr.ErrAlreadyExists), codes.AlreadyExists, "", 0},
		{"invalid", &brokererr.InvalidArgumentError{Field: "credential_id", Reason: "bad"}, codes.InvalidArgument, "", 0},
		{"reuse grace too short", &brokererr.InvalidArgumentError{Field: "spec.reuse_grace_period", Reason: "too short", Code: option.ReuseGraceTooShort}, codes.InvalidArgument, ReasonReuseGraceTooShort, 0},
		{"stored reuse grace outgrown", (&option.Options{Claim: option.Claim{Margin: 30 * time.Second}}).RefuseShortGrace(credspec.Spec{ReuseGrace: 20 * time.Second}), codes.FailedPrecondition, ReasonReuseGraceTooShort, 0},
		{"invalid with code", &brokererr.InvalidArgumentError{Field: "min_remaining_lifetime", Reason: "too long", Code: "MIN_LIFETIME_UNATTAINABLE"}, codes.InvalidArgument, "MIN_LIFETIME_UNATTAINABLE", 0},
		{"reauth", fmt.Errorf("%w: revoked", brokererr.ErrReauthRequired), codes.FailedPrecondition, ReasonReauthenticationRequired, 0},
		{"provider down", &brokererr.UnavailableError{Component: brokererr.ComponentProvider, RetryAfter: 2 * time.Second, Err: secretish}, codes.Unavailable, ReasonProviderUnavailable, 2 * time.Second},
		{"store down", &brokererr.UnavailableError{Component: brokererr.ComponentStore, RetryAfter: time.Second, Err: secretish}, codes.Unavailable, ReasonStoreUnavailable, time.Second},
		{"rate limited", &brokererr.RateLimitedError{RetryAfter: 3 * time.Second}, codes.ResourceExhausted, ReasonRejectionRateLimited, 3 * time.Second},
		{"client rejected", fmt.Errorf("%w (invalid_client)", brokererr.ErrClientRejected), codes.FailedPrecondition, ReasonProviderRejectedClient, 0},
		{"cursor expired", fmt.Errorf("%w: x", notice.ErrCursorExpired), codes.OutOfRange, ReasonCursorExpired, 0},
		{"too slow", notice.ErrSubscriberTooSlow, codes.Aborted, ReasonSubscriberTooSlow, 0},
		{"conflict", fmt.Errorf("%w: x", brokererr.ErrConflict), codes.Aborted, "", 0},
		{"closed", brokererr.ErrClosed, codes.Unavailable, "", 0},
		{"flow denied", &authflow.AuthorizationError{Reason: authflow.FlowDenied, Detail: "no"}, codes.FailedPrecondition, ReasonAuthorizationDenied, 0},
		{"flow expired", &authflow.AuthorizationError{Reason: authflow.FlowExpired, Detail: "late"}, codes.FailedPrecondition, ReasonAuthorizationExpired, 0},
		{"flow refused", &authflow.AuthorizationError{Reason: authflow.FlowRefused, Detail: "no refresh token"}, codes.FailedPrecondition, ReasonAuthorizationFailed, 0},
		{"no callback", authflow.ErrCallbackNotConfigured, codes.FailedPrecondition, ReasonCallbackNotConfigured, 0},
		{"too many flows", fmt.Errorf("%w: 1000", authflow.ErrTooManyFlows), codes.ResourceExhausted, ReasonTooManyFlows, time.Minute},
		{"too many replays", fmt.Errorf("%w (2 at once)", notice.ErrTooManyReplays), codes.ResourceExhausted, ReasonTooManyReplays, replayRetry},
		{"canceled", fmt.Errorf("wait: %w", context.Canceled), codes.Canceled, "", 0},
		{"unknown", secretish, codes.Internal, "", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := toStatus(context.Background(), slog.New(slog.DiscardHandler), c.err)
			st := status.Convert(err)
			if st.Code() != c.code {
				t.Fatalf("code %s, want %s", st.Code(), c.code)
			}
			if strings.Contains(st.Message(), "s.abcdef") || strings.Contains(st.Message(), "vault.internal") {
				t.Fatalf("message leaks internals: %q", st.Message())
			}
			var reason string
			var retry time.Duration
			for _, d := range st.Details() {
				switch d := d.(type) {
				case *errdetails.ErrorInfo:
					reason = d.GetReason()
					if d.GetDomain() != ErrorDomain {
						t.Errorf("domain %q", d.GetDomain())
					}
				case *errdetails.RetryInfo:
					retry = d.GetRetryDelay().AsDuration()
				}
			}
			if reason != c.reason || retry != c.retry {
				t.Fatalf("reason %q retry %s, want %q %s", reason, retry, c.reason, c.retry)
			}
		})
	}
}
