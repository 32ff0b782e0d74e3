// Package spans holds the rotation logic's spans: their names, their
// attributes and how they start and end.
package spans

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/rotavault/rotavault/broker/brokererr"
)

// The broker's spans: rotavault.refresh around a flight (one rotation,
// shared by every caller that waits for it) and rotavault.claim around
// taking the refresh claim across replicas. Their tracer is the one of the
// span in the caller's context (the gRPC call's, when tracing is on), so
// the broker needs no tracing option, and a context without a span (tracing
// off, background work) yields the no-op tracer: nothing is recorded and
// nearly nothing spent.
//
// Attributes name the credential, the generation and the outcome: never a
// token, a secret or an error's text.
const (
	Refresh = "rotavault.refresh"
	Claim   = "rotavault.claim"

	AttrCredentialID = "rotavault.credential_id"
	AttrGeneration   = "rotavault.generation"
	AttrOutcome      = "rotavault.outcome"
)

const tracerName = "github.com/rotavault/rotavault/broker"

// Start starts name in ctx as a child of parent's span (parent may be
// ctx itself; the flight runs under the broker's context, not the
// caller's).
func Start(ctx, parent context.Context, name, credentialID string) (context.Context, trace.Span) {
	ps := trace.SpanFromContext(parent)
	if !ps.IsRecording() {
		return ctx, ps // non-recording: End and SetAttributes are no-ops
	}
	return ps.TracerProvider().Tracer(tracerName).Start(trace.ContextWithSpan(ctx, ps), name,
		trace.WithAttributes(attribute.String(AttrCredentialID, credentialID)))
}

// End records the family generation reached (generation < 0: none) and the
// outcome, then ends span.
func End(span trace.Span, generation int64, outcome string, err error) {
	if !span.IsRecording() {
		return
	}
	if generation >= 0 {
		span.SetAttributes(attribute.Int64(AttrGeneration, generation))
	}
	if err != nil {
		outcome = errorOutcome(err)
		span.SetStatus(codes.Error, outcome)
	}
	span.SetAttributes(attribute.String(AttrOutcome, outcome))
	span.End()
}

// errorOutcome names an error's class for a span: its text may quote a
// provider's answer.
func errorOutcome(err error) string {
	var unavailable *brokererr.UnavailableError
	switch {
	case errors.Is(err, brokererr.ErrReauthRequired):
		return "reauth_required"
	case errors.As(err, &unavailable):
		return "unavailable"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "cancelled"
	case errors.Is(err, brokererr.ErrClosed):
		return "closed"
	default:
		return "error"
	}
}
