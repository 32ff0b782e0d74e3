package server

import (
	"context"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// ReasonRateLimited is the ErrorInfo reason of a call refused because its
// caller exceeded its request rate; RetryInfo says when to try again.
const ReasonRateLimited = "RATE_LIMITED"

// Default per-caller limits. A consumer with a caching client calls rarely,
// but a deployment whose replicas share one identity and ask on every
// request can be busy, and a service starting a thousand workers asks in one
// burst: the burst absorbs that. The rate bounds what one runaway caller
// takes from the others (a cached answer costs the server ~15 µs of CPU, so
// 10,000/s is a fraction of one core).
const (
	DefaultRateLimit = 10_000 // requests per second, sustained, per caller
	DefaultRateBurst = 20_000
)

// RateLimit configures per-caller request limits.
type RateLimit struct {
	Rate     float64 // requests per second per caller; 0: DefaultRateLimit
	Burst    int     // requests a caller may send at once; 0: DefaultRateBurst
	Disabled bool
}

func (r RateLimit) withDefaults() RateLimit {
	if r.Rate <= 0 {
		r.Rate = DefaultRateLimit
	}
	if r.Burst <= 0 {
		r.Burst = DefaultRateBurst
	}
	return r
}

// callerLimiter keeps a token bucket per caller. Buckets idle for longer than
// it takes to refill are forgotten, so memory follows the number of active
// callers, not of every caller ever seen.
type callerLimiter struct {
	limit    rate.Limit
	burst    int
	caller   func(context.Context) string
	now      func() time.Time
	refusals *refusalLog

	// idle is how long an unused bucket takes to be full again; after it
	// the bucket is indistinguishable from a new one and can be dropped.
	idle time.Duration

	mu        sync.Mutex
	buckets   map[string]*rate.Limiter
	lastSweep time.Time
}

func newCallerLimiter(cfg RateLimit, caller func(context.Context) string, refusals *refusalLog) *callerLimiter {
	burst := max(cfg.Burst, 1)
	return &callerLimiter{
		limit:    rate.Limit(cfg.Rate),
		burst:    burst,
		caller:   caller,
		now:      time.Now,
		refusals: refusals,
		idle:     time.Duration(float64(burst) / cfg.Rate * float64(time.Second)),
		buckets:  make(map[string]*rate.Limiter),
	}
}

// allow takes one token from the caller's bucket, or reports how long until
// one is available.
func (l *callerLimiter) allow(ctx context.Context) (ok bool, retryAfter time.Duration) {
	return l.allowKey(l.caller(ctx))
}

// allowKey is allow for the bucket named key.
func (l *callerLimiter) allowKey(key string) (ok bool, retryAfter time.Duration) {
	now := l.now()
	l.mu.Lock()
	if now.Sub(l.lastSweep) > l.idle {
		for k, b := range l.buckets {
			if b.TokensAt(now) >= float64(l.burst) {
				delete(l.buckets, k)
			}
		}
		l.lastSweep = now
	}
	b, found := l.buckets[key]
	if !found {
		b = rate.NewLimiter(l.limit, l.burst)
		l.buckets[key] = b
	}
	l.mu.Unlock()
	r := b.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

func (l *callerLimiter) refuse(ctx context.Context, method string, retryAfter time.Duration) error {
	l.refusals.refuse(ctx, refusedRateLimited, "call refused: rate limit", "caller", callerIdentity(ctx), "method", method)
	st := status.New(codes.ResourceExhausted, fmt.Sprintf("%s: request rate limit exceeded for this caller; retry later", method))
	return withDetails(st,
		&errdetails.ErrorInfo{Reason: ReasonRateLimited, Domain: ErrorDomain},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(retryAfter.Round(time.Millisecond))})
}

// unary and stream limit every call they see; New installs them for the
// calls that need authentication only (needsAuth), so that health probes are
// never limited.
func (l *callerLimiter) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if ok, wait := l.allow(ctx); !ok {
		return nil, l.refuse(ctx, info.FullMethod, wait)
	}
	return handler(ctx, req)
}

func (l *callerLimiter) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if ok, wait := l.allow(ss.Context()); !ok {
		return l.refuse(ss.Context(), info.FullMethod, wait)
	}
	return handler(srv, ss)
}
