package tracing

import (
	"context"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/rotavault/rotavault/store"
)

// Attributes of the store spans.
const (
	AttrStoreOp      = "rotavault.store.op"
	AttrStoreKeyKind = "rotavault.store.key_kind"
	AttrStoreResult  = "rotavault.store.result"
)

// tracedStore gives each call made within a traced call a span
// "store.<op>" with the key's kind (its first segment: credentials,
// families, flows…) and the result. Not the key itself, which names
// credentials and families (not secret, but of no use in a span and
// unbounded), and never the value, which holds tokens. Calls outside a
// traced call (notice polls, the census) start no trace of their own.
type tracedStore struct {
	s      store.Store
	tracer trace.Tracer
}

func (t *tracedStore) start(ctx context.Context, op, key string) (context.Context, trace.Span) {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return ctx, nil
	}
	return t.tracer.Start(ctx, "store."+op, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String(AttrStoreOp, op), attribute.String(AttrStoreKeyKind, keyKind(key))))
}

func end(span trace.Span, err error) {
	if span == nil {
		return
	}
	r := store.ResultOf(err)
	span.SetAttributes(attribute.String(AttrStoreResult, r))
	if r == "error" || r == "cancelled" {
		// The outcome's name only: a backend's error text may quote a
		// Vault URL or path.
		span.SetStatus(codes.Error, r)
	}
	span.End()
}

// keyKind is the first segment of a key or prefix.
func keyKind(key string) string {
	kind, _, _ := strings.Cut(key, "/")
	return kind
}

func (t *tracedStore) Get(ctx context.Context, key string) (r store.Record, err error) {
	ctx, span := t.start(ctx, "get", key)
	defer func() { end(span, err) }()
	return t.s.Get(ctx, key)
}

func (t *tracedStore) Put(ctx context.Context, key string, value []byte, expectedVersion uint64) (v uint64, err error) {
	ctx, span := t.start(ctx, "put", key)
	defer func() { end(span, err) }()
	return t.s.Put(ctx, key, value, expectedVersion)
}

func (t *tracedStore) Delete(ctx context.Context, key string) (err error) {
	ctx, span := t.start(ctx, "delete", key)
	defer func() { end(span, err) }()
	return t.s.Delete(ctx, key)
}

func (t *tracedStore) List(ctx context.Context, prefix string) (keys []string, err error) {
	ctx, span := t.start(ctx, "list", prefix)
	defer func() { end(span, err) }()
	return t.s.List(ctx, prefix)
}

func (t *tracedStore) ListPage(ctx context.Context, prefix, after string, limit int) (keys []string, more bool, err error) {
	ctx, span := t.start(ctx, "list_page", prefix)
	defer func() { end(span, err) }()
	return t.s.ListPage(ctx, prefix, after, limit)
}

// ListingHints is passed on: hints are not store calls, so not traced.
func (t *tracedStore) ListingHints(prefix string) func(string, bool) {
	return t.s.ListingHints(prefix)
}
