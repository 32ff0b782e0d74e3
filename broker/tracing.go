package broker

import (
	"context"
	"errors"

	"github.com/rotavault/rotavault/broker/brokererr"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
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
	SpanRefresh = "rotavault.refresh"
	SpanClaim   = "rotavault.claim"

	AttrCredentialID = "rotavault.credential_id"
	AttrGeneration   = "rotavault.generation"
	AttrOutcome      = "rotavault.outcome"
)

const tracerName = "github.com/rotavault/rotavault/broker"

// startSpan starts name in ctx as a child of parent's span (parent may be
// ctx itself; the flight runs under the broker's context, not the
// caller's).
func startSpan(ctx, parent context.Context, name, credentialID string) (context.Context, trace.Span) {
	ps := trace.SpanFromContext(parent)
	if !ps.IsRecording() {
		return ctx, ps // non-recording: End and SetAttributes are no-ops
	}
	return ps.TracerProvider().Tracer(tracerName).Start(trace.ContextWithSpan(ctx, ps), name,
		trace.WithAttributes(attribute.String(AttrCredentialID, credentialID)))
}

// endSpan records the family generation reached (v may be nil) and the
// outcome, then ends span.
func endSpan(span trace.Span, v *view, outcome string, err error) {
	if !span.IsRecording() {
		return
	}
	if v != nil && v.fam != nil {
		span.SetAttributes(attribute.Int64(AttrGeneration, int64(v.fam.Generation)))
	}
	if err != nil {
		outcome = errorOutcome(err)
		span.SetStatus(codes.Error, outcome)
	}
	span.SetAttributes(attribute.String(AttrOutcome, outcome))
	span.End()
}

// endClaimSpan ends a rotavault.claim span: "claimed" (this replica
// refreshes) or "adopted" (another replica's result serves).
func endClaimSpan(span trace.Span, lease *claimLease, adopted *view, err error) {
	if lease != nil {
		endSpan(span, lease.v, "claimed", err)
		return
	}
	endSpan(span, adopted, "adopted", err)
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
