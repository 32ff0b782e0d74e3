package main

import (
	"time"

	"github.com/spf13/pflag"

	"github.com/rotavault/rotavault/server"
)

// limitFlags are serve's bounds on what callers — allowed anything or not —
// can make the server hold (server.Limits), and whom the OAuth callback
// believes about a browser's address. Kept together so that they read as
// one table in --help and in the code.
type limitFlags struct {
	headerListSize, streamsPerConn    int
	connections, connectionsPerHost   int
	healthWatches, watchesPerIdentity int
	handshakeTimeout, idleTimeout     time.Duration
	callbackTrustedProxies            []string
}

func (f *limitFlags) register(fs *pflag.FlagSet) {
	fs.IntVar(&f.headerListSize, "max-header-list-size", server.DefaultMaxHeaderListSize, "largest request header list accepted, in bytes (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE); a connection sending more is closed. Fits bearer tokens of 16 KiB and more")
	fs.IntVar(&f.streamsPerConn, "max-concurrent-streams", server.DefaultMaxConcurrentStreams, "calls (watch streams included) in flight on one connection; more are refused, and gRPC clients queue them")
	fs.IntVar(&f.connections, "max-connections", server.DefaultMaxConnections, "connections held open at once; more are closed as soon as accepted (rotavault_grpc_connections_refused_total); -1 no limit")
	fs.IntVar(&f.connectionsPerHost, "max-connections-per-host", server.DefaultMaxConnectionsPerHost, "connections held open at once from one source address; behind a load balancer or NAT that hides callers' addresses, raise it to --max-connections; -1 no limit")
	fs.DurationVar(&f.handshakeTimeout, "handshake-timeout", server.DefaultHandshakeTimeout, "time a new connection has for its TLS handshake and HTTP/2 preface")
	fs.DurationVar(&f.idleTimeout, "max-connection-idle", server.DefaultMaxConnectionIdle, "close a connection that has had no call in flight for this long (clients reconnect when they next call); -1s never")
	fs.IntVar(&f.healthWatches, "max-health-watches", server.DefaultMaxHealthWatches, "grpc.health.v1.Health/Watch streams open at once, from anyone (they need no credentials), a tenth of them at most from one source address (IPv6: /64); more get RESOURCE_EXHAUSTED; -1 no limit")
	fs.IntVar(&f.watchesPerIdentity, "max-watch-streams-per-identity", server.DefaultMaxWatchStreamsPerIdentity, "WatchRevocations streams one caller identity may have open at once, unless a policy rule sets max_watch_streams; more get RESOURCE_EXHAUSTED + TOO_MANY_WATCH_STREAMS; an identity's calls in flight are bounded by it plus 1,000 (TOO_MANY_CALLS_IN_FLIGHT); -1 lifts both")
	fs.StringSliceVar(&f.callbackTrustedProxies, "callback-trusted-proxy", nil, "address or CIDR of a reverse proxy in front of --http-listen whose X-Forwarded-For the OAuth callback's per-source rate limit believes (repeatable); other peers are limited by their own address")
}

// limits is the server.Limits the flags say.
func (f *limitFlags) limits() server.Limits {
	return server.Limits{
		MaxHeaderListSize:          f.headerListSize,
		MaxConcurrentStreams:       f.streamsPerConn,
		HandshakeTimeout:           f.handshakeTimeout,
		MaxConnectionIdle:          f.idleTimeout,
		MaxHealthWatches:           f.healthWatches,
		MaxWatchStreamsPerIdentity: f.watchesPerIdentity,
		Connections:                server.ConnLimits{Total: f.connections, PerHost: f.connectionsPerHost},
	}
}
