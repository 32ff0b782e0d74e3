package server

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// Limits bounds what a caller can make the server hold, whether or not it
// is allowed anything: header blocks, streams, connections, idle time and
// long-lived streams. The zero value means every default; a negative count
// or duration turns that bound off (tests, benchmarks).
type Limits struct {
	// MaxHeaderListSize bounds one request's header list (HTTP/2
	// SETTINGS_MAX_HEADER_LIST_SIZE: decoded names and values plus 32
	// bytes per field); a connection sending more is closed before the
	// block is buffered. Default DefaultMaxHeaderListSize.
	MaxHeaderListSize int
	// MaxConcurrentStreams bounds the calls in flight on one connection;
	// more are refused with REFUSED_STREAM (gRPC clients queue them).
	// Default DefaultMaxConcurrentStreams.
	MaxConcurrentStreams int
	// HandshakeTimeout bounds a new connection's TLS handshake and HTTP/2
	// preface. Default DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// MaxConnectionIdle closes a connection that has had no call in
	// flight for this long (a GOAWAY; clients reconnect when they next
	// call). Default DefaultMaxConnectionIdle.
	MaxConnectionIdle time.Duration
	// MaxHealthWatches bounds the grpc.health.v1.Health/Watch streams open
	// at once, across callers (they need no credentials). Default
	// DefaultMaxHealthWatches.
	MaxHealthWatches int
	// MaxWatchStreamsPerIdentity bounds the WatchRevocations streams one
	// identity has open at once, unless its policy rules say otherwise
	// (max_watch_streams). Default DefaultMaxWatchStreamsPerIdentity.
	MaxWatchStreamsPerIdentity int
	// Connections bounds the connections Server.Serve accepts.
	Connections ConnLimits
}

// Defaults of Limits. The header list fits a bearer token of 16 KiB and
// more (client certificates travel in the TLS handshake, not in headers);
// 1,000 streams per connection leave room for the 500 watch streams a
// fan-out client multiplexes on one connection; a handshake takes
// milliseconds, so 10 s is generous; an idle connection costs about
// 70 KiB, which a client that calls once an hour need not pin.
const (
	DefaultMaxHeaderListSize          = 64 << 10
	DefaultMaxConcurrentStreams       = 1000
	DefaultHandshakeTimeout           = 10 * time.Second
	DefaultMaxConnectionIdle          = 5 * time.Minute
	DefaultMaxHealthWatches           = 1000
	DefaultMaxWatchStreamsPerIdentity = 1000
)

// Machine-readable reasons of the limits' refusals.
const (
	// ReasonTooManyWatchStreams: the caller's identity has as many
	// WatchRevocations streams open as it may; RetryInfo says when to try
	// again.
	ReasonTooManyWatchStreams = "TOO_MANY_WATCH_STREAMS"
	// ReasonTooManyHealthWatches: the server has as many health Watch
	// streams open as it allows.
	ReasonTooManyHealthWatches = "TOO_MANY_HEALTH_WATCHES"
	// ReasonTooManyCallsInFlight: the caller's identity has as many calls
	// in flight as it may (its watch-stream limit plus 1,000); RetryInfo
	// says when to try again.
	ReasonTooManyCallsInFlight = "TOO_MANY_CALLS_IN_FLIGHT"
)

// watchRetryDelay is the RetryInfo of a refused watch: long enough that a
// fleet over its share does not hammer the server, short enough that a
// client gets its stream soon after another ends.
const watchRetryDelay = 10 * time.Second

func (l Limits) withDefaults() Limits {
	orDefault := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	orDefault(&l.MaxHeaderListSize, DefaultMaxHeaderListSize)
	orDefault(&l.MaxConcurrentStreams, DefaultMaxConcurrentStreams)
	orDefault(&l.MaxHealthWatches, DefaultMaxHealthWatches)
	orDefault(&l.MaxWatchStreamsPerIdentity, DefaultMaxWatchStreamsPerIdentity)
	if l.HandshakeTimeout == 0 {
		l.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if l.MaxConnectionIdle == 0 {
		l.MaxConnectionIdle = DefaultMaxConnectionIdle
	}
	l.Connections = l.Connections.withDefaults()
	return l
}

// serverOptions are the limits gRPC enforces itself.
func (l Limits) serverOptions() []grpc.ServerOption {
	var opts []grpc.ServerOption
	if l.MaxHeaderListSize > 0 {
		opts = append(opts, grpc.MaxHeaderListSize(uint32(l.MaxHeaderListSize)))
	}
	if l.MaxConcurrentStreams > 0 {
		opts = append(opts, grpc.MaxConcurrentStreams(uint32(l.MaxConcurrentStreams)))
	}
	if l.HandshakeTimeout > 0 {
		opts = append(opts, grpc.ConnectionTimeout(l.HandshakeTimeout))
	}
	return opts
}

// Refusal reasons, for the sampled log: a fixed set, so the sampler's state
// stays bounded.
const (
	refusedUnauthenticated   = "unauthenticated"
	refusedPermissionDenied  = "permission_denied"
	refusedRateLimited       = "rate_limited"
	refusedHealthWatches     = "health_watch_limit"
	refusedWatchStreams      = "watch_stream_limit"
	refusedCallsInFlight     = "calls_in_flight_limit"
	refusedConnections       = "connection_limit"
	refusedConnectionsByHost = "connection_limit_per_host"
	refusedCallbackMalformed = "callback_malformed_state"
	refusedCallbackRate      = "callback_rate_limited"
)

// refusalLogInterval is the least time between two log lines of one
// refusal reason.
const refusalLogInterval = time.Second

// refusalLog logs refusals sampled: at most one line per reason per
// refusalLogInterval, carrying how many were suppressed since the last one.
// Someone who is allowed nothing can make the server refuse as fast as it
// can answer; unsampled, each refusal would cost a log line. Safe for
// concurrent use.
type refusalLog struct {
	log *slog.Logger
	now func() time.Time

	mu      sync.Mutex
	reasons map[string]*refusalState
}

type refusalState struct {
	last       time.Time
	suppressed int
}

func newRefusalLog(log *slog.Logger) *refusalLog {
	return &refusalLog{log: log, now: time.Now, reasons: make(map[string]*refusalState)}
}

// refuse marks the call refused (it gets no access-log line of its own) and
// logs msg with attrs unless this reason was logged within the interval.
func (r *refusalLog) refuse(ctx context.Context, reason, msg string, attrs ...any) {
	markRefused(ctx)
	if now, suppressed := r.sample(reason); now {
		r.log.InfoContext(ctx, msg, append(attrs, "refusal", reason, "suppressed", suppressed)...)
	}
}

// sample reports whether a line of reason is due (none within the
// interval), and how many were left out since the last one. reason must
// come from a fixed set: the sampler keeps one state per reason.
func (r *refusalLog) sample(reason string) (now bool, suppressed int) {
	t := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.reasons[reason]
	if st == nil {
		st = &refusalState{}
		r.reasons[reason] = st
	}
	if !st.last.IsZero() && t.Sub(st.last) < refusalLogInterval {
		st.suppressed++
		return false, 0
	}
	suppressed = st.suppressed
	st.last, st.suppressed = t, 0
	return true, suppressed
}

// markRefused tells the access log that the call was refused and logged
// (sampled) as such.
func markRefused(ctx context.Context) {
	if s, ok := ctx.Value(callerSlotKey{}).(*callerSlot); ok {
		s.refused.Store(true)
	}
}

func wasRefused(ctx context.Context) bool {
	s, ok := ctx.Value(callerSlotKey{}).(*callerSlot)
	return ok && s.refused.Load()
}

// streamSlots counts the streams open per key, bounded by a maximum given
// at each take. Keys with no stream are forgotten, so memory follows the
// streams open. Safe for concurrent use.
type streamSlots struct {
	mu     sync.Mutex
	counts map[string]int
}

func newStreamSlots() *streamSlots { return &streamSlots{counts: make(map[string]int)} }

// take reserves a slot for key unless it already holds limit (limit < 0:
// no limit); a successful take must be followed by one give.
func (s *streamSlots) take(key string, limit int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if limit >= 0 && s.counts[key] >= limit {
		return false
	}
	s.counts[key]++
	return true
}

func (s *streamSlots) give(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.counts[key]--; s.counts[key] <= 0 {
		delete(s.counts, key)
	}
}

const (
	healthWatchMethod      = healthpb.Health_Watch_FullMethodName
	watchRevocationsMethod = rotavaultv1.TokenVaultService_WatchRevocations_FullMethodName
)

// healthWatchCap refuses health Watch streams beyond max open at once: they
// need no credentials, and each holds a goroutine and a buffer for as long
// as its client keeps it. One source (an IPv4 address or an IPv6 /64) may
// hold at most a tenth of them, so that a single unauthenticated host
// cannot take every slot from the load balancers that watch health.
func healthWatchCap(max int, refusals *refusalLog) grpc.StreamServerInterceptor {
	slots := newStreamSlots()
	perSource := max
	if max > 0 {
		perSource = (max + 9) / 10
	}
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if info.FullMethod != healthWatchMethod {
			return handler(srv, ss)
		}
		ctx := ss.Context()
		source := "source " + peerSourceKey(ctx)
		if !slots.take(source, perSource) {
			refusals.refuse(ctx, refusedHealthWatches, "health watch refused: too many open from one source", "limit", perSource, "peer.address", peerAddrOf(ctx))
			return refusal(ReasonTooManyHealthWatches, "too many health watch streams are open from this address; use Check, or retry later", watchRetryDelay)
		}
		defer slots.give(source)
		if !slots.take("", max) {
			refusals.refuse(ctx, refusedHealthWatches, "health watch refused: too many open", "limit", max, "peer.address", peerAddrOf(ctx))
			return refusal(ReasonTooManyHealthWatches, "too many health watch streams are open on this server; use Check, or retry later", watchRetryDelay)
		}
		defer slots.give("")
		return handler(srv, ss)
	}
}

// peerSourceKey is the per-source unit (sourceKey) of the call's peer, or
// its address as given when that is not an IP address.
func peerSourceKey(ctx context.Context) string {
	p, _ := peer.FromContext(ctx)
	if p != nil {
		if tcp, ok := p.Addr.(*net.TCPAddr); ok {
			if addr, ok := netip.AddrFromSlice(tcp.IP); ok {
				return sourceKey(addr)
			}
		}
	}
	return peerAddr(p)
}

// watchStreamCap refuses a WatchRevocations stream to an identity that has
// as many open as limitOf says. It runs after authentication.
func watchStreamCap(limitOf func(context.Context) int, refusals *refusalLog) grpc.StreamServerInterceptor {
	slots := newStreamSlots()
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if info.FullMethod != watchRevocationsMethod {
			return handler(srv, ss)
		}
		ctx := ss.Context()
		key, limit := limiterKey(ctx), limitOf(ctx)
		if !slots.take(key, limit) {
			refusals.refuse(ctx, refusedWatchStreams, "watch refused: the caller has too many open", "caller", callerIdentity(ctx), "limit", limit)
			return refusal(ReasonTooManyWatchStreams, "this identity has too many revocation watch streams open; close some, or ask for a higher max_watch_streams in the policy", watchRetryDelay)
		}
		defer slots.give(key)
		return handler(srv, ss)
	}
}

// refusal is RESOURCE_EXHAUSTED with the reason and when to retry.
func refusal(reason, msg string, retry time.Duration) error {
	return withDetails(status.New(codes.ResourceExhausted, msg),
		&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
}

// peerAddrOf is the call's peer address, for logs.
func peerAddrOf(ctx context.Context) string {
	p, _ := peer.FromContext(ctx)
	return peerAddr(p)
}
