package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	grpcauth "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/rotavault/rotavault/broker/authflow"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// DevIdentity is every caller's identity on a server without an Auth (dev
// and tests on loopback): an admin.
const DevIdentity = "dev-admin"

// PolicySource yields the policy in force now; a reloading source may
// return a different one at each call.
type PolicySource interface {
	Policy() *Policy
}

// TokenVerifier maps a bearer token to the identity it was issued to.
type TokenVerifier interface {
	VerifyToken(token string) (identity string, ok bool)
}

// AuthConfig configures caller authentication and authorization.
type AuthConfig struct {
	// Policy decides who may do what. Required.
	Policy PolicySource
	// Tokens accepts bearer tokens ("authorization: Bearer <token>"),
	// over TLS or from loopback only. Nil: certificates only.
	Tokens TokenVerifier
	// ClientCAs re-verifies each call's client certificate against the CAs
	// in force now. Nil: Policy's, if it has them (a *Reloader does).
	ClientCAs ClientCASource
	Logger    *slog.Logger // nil: discard
}

// Auth authenticates callers (verified client certificate, else bearer
// token) and authorizes each call against the method table and the policy.
type Auth struct {
	policy PolicySource
	tokens TokenVerifier
	log    *slog.Logger
	rules  map[string]methodRule
	cas    ClientCASource
	trust  trustCache
	// refusals logs unauthenticated and denied calls, sampled.
	refusals *refusalLog
	// open: no authentication, every caller is DevIdentity with every
	// right. Only for a server without Auth (dev, tests).
	open bool
}

// NewAuth returns the authenticator and authorizer for a server.
func NewAuth(cfg AuthConfig) (*Auth, error) {
	if cfg.Policy == nil {
		return nil, fmt.Errorf("auth: a policy is required")
	}
	cas := cfg.ClientCAs
	if cas == nil {
		cas, _ = cfg.Policy.(ClientCASource)
	}
	log := loggerOrDiscard(cfg.Logger)
	return &Auth{policy: cfg.Policy, tokens: cfg.Tokens, cas: cas, log: log, rules: methodRules(), refusals: newRefusalLog(log)}, nil
}

func openAuth(log *slog.Logger) *Auth {
	return &Auth{open: true, log: log, rules: methodRules(), refusals: newRefusalLog(log)}
}

type identityKey struct{}

// IdentityFromContext returns the authenticated caller of a call.
func IdentityFromContext(ctx context.Context) (string, bool) {
	id, ok := ctx.Value(identityKey{}).(string)
	return id, ok && id != ""
}

// errUnauthenticated says nothing about why: which check failed is for
// the server log, not for a caller probing.
var errUnauthenticated = status.Error(codes.Unauthenticated, "missing or invalid credentials")

// authenticate is the auth interceptor's AuthFunc: it establishes the
// caller's identity or fails the call with UNAUTHENTICATED.
func (a *Auth) authenticate(ctx context.Context) (context.Context, error) {
	p, _ := peer.FromContext(ctx)
	var id string
	if a.open {
		id = DevIdentity
		if p != nil && p.Addr != nil {
			// Keep the peer in the audit trail: it is all that tells dev
			// callers apart.
			id += "/peer:" + p.Addr.String()
		}
	} else if tapped, ok := ctx.Value(tappedIdentity{}).(string); ok {
		id = tapped // identified by tapAuthenticate a moment ago
	} else {
		var why string
		id, why = a.identify(ctx, p)
		if id == "" {
			a.refusals.refuse(ctx, refusedUnauthenticated, "call unauthenticated", "reason", why, "method", methodOf(ctx), "peer.address", peerAddr(p))
			return nil, errUnauthenticated
		}
	}
	if slot, ok := ctx.Value(callerSlotKey{}).(*callerSlot); ok {
		slot.id.Store(&id)
	}
	return context.WithValue(ctx, identityKey{}, id), nil
}

// tappedIdentity is the context key of the identity tapAuthenticate found.
type tappedIdentity struct{}

// tapAuthenticate identifies a call's caller from its peer and headers as
// soon as its headers arrive: gRPC reads a unary call's whole request
// (up to MaxRecvMsgSize) before any interceptor runs, so someone allowed
// nothing could otherwise hold a 64 KiB buffer and a goroutine per stream
// by never finishing the message — 1,000 streams a connection (10
// connections made `serve` hold 730 MB). Refused streams end at once with
// UNAUTHENTICATED, logged sampled and counted by refused; the interceptor
// takes the identity found here instead of checking twice. Health checks
// need no credentials and pass.
//
// An identified caller may have at most its watch-stream limit plus
// callsInFlightRoom calls in flight (no bound if watchLimit is negative):
// beyond, RESOURCE_EXHAUSTED + TOO_MANY_CALLS_IN_FLIGHT before its request
// is read, for the same reason, counted by overLimit. A call's place is
// given back when its stream ends (its context is done).
func (a *Auth) tapAuthenticate(refused, overLimit prometheus.Counter, watchLimit int) tap.ServerInHandle {
	health := "/" + healthpb.Health_ServiceDesc.ServiceName + "/"
	inFlight := newStreamSlots()
	return func(ctx context.Context, info *tap.Info) (context.Context, error) {
		if a.open || strings.HasPrefix(info.FullMethodName, health) {
			return ctx, nil
		}
		p, _ := peer.FromContext(ctx)
		id, why := a.identify(ctx, p)
		if id == "" {
			refused.Inc()
			a.refusals.refuse(ctx, refusedUnauthenticated, "call unauthenticated", "reason", why, "method", info.FullMethodName, "peer.address", peerAddr(p))
			return nil, errUnauthenticated
		}
		limit := -1
		if watchLimit >= 0 {
			limit = callsInFlightRoom + a.maxWatchStreamsOf(id, watchLimit)
		}
		if !inFlight.take(id, limit) {
			overLimit.Inc()
			a.refusals.refuse(ctx, refusedCallsInFlight, "call refused: too many in flight", "caller", id, "limit", limit)
			return nil, refusal(ReasonTooManyCallsInFlight, "this identity has too many calls in flight; retry later", time.Second)
		}
		context.AfterFunc(ctx, func() { inFlight.give(id) })
		return context.WithValue(ctx, tappedIdentity{}, id), nil
	}
}

// callsInFlightRoom is how many calls an identity may have in flight
// besides its watch streams: a service starting a thousand workers at once
// fits; each such call can hold a request buffer of up to 64 KiB.
const callsInFlightRoom = 1000

// identify returns the caller's identity, or "" and why not. A verified
// client certificate wins over a bearer token.
func (a *Auth) identify(ctx context.Context, p *peer.Peer) (id, why string) {
	var tlsInfo *credentials.TLSInfo
	if p != nil {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			tlsInfo = &ti
		}
	}
	if tlsInfo != nil && len(tlsInfo.State.VerifiedChains) > 0 && len(tlsInfo.State.VerifiedChains[0]) > 0 {
		if a.cas != nil {
			if err := a.trust.verify(a.cas.ClientCAs(), tlsInfo.State.PeerCertificates, time.Now()); err != nil {
				return "", err.Error()
			}
		}
		id, err := CertificateIdentity(tlsInfo.State.VerifiedChains[0][0])
		if err != nil {
			return "", err.Error()
		}
		return id, ""
	}
	token, err := grpcauth.AuthFromMD(ctx, "bearer")
	if err != nil {
		return "", "no client certificate and no bearer token"
	}
	if a.tokens == nil {
		return "", "bearer tokens are not accepted"
	}
	if tlsInfo == nil && !isLoopback(p) {
		// A token sent in plaintext across the network is a token given
		// away; refuse it even if it is valid.
		return "", "bearer token over plaintext from a non-loopback peer"
	}
	id, ok := a.tokens.VerifyToken(token)
	if !ok {
		return "", "unknown bearer token"
	}
	return id, ""
}

func isLoopback(p *peer.Peer) bool {
	if p == nil {
		return false
	}
	tcp, ok := p.Addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

func peerAddr(p *peer.Peer) string {
	if p == nil || p.Addr == nil {
		return "unknown"
	}
	return p.Addr.String()
}

func methodOf(ctx context.Context) string {
	m, _ := grpc.Method(ctx)
	return m
}

// authorize checks the call's method and the credential ids its request
// names against the policy in force now.
func (a *Auth) authorize(ctx context.Context, method string, req any) error {
	if a.open {
		return nil
	}
	id, ok := IdentityFromContext(ctx)
	if !ok {
		return errUnauthenticated
	}
	rule, ok := a.rules[method]
	if !ok {
		// Fail closed: a method nobody put in the table is nobody's.
		a.log.ErrorContext(ctx, "call to a method missing from the authorization table", "method", method, "caller", id)
		return status.Errorf(codes.PermissionDenied, "permission denied: %s is not authorized for anyone", method)
	}
	policy := a.policy.Policy()
	var ids []string
	if rule.credentials != nil {
		ids = rule.credentials(req)
	}
	if len(ids) == 0 {
		var allowed bool
		if rule.anyCredential {
			allowed = policy.AllowsSome(id, rule.role)
		} else {
			allowed = policy.Allows(id, rule.role, "")
		}
		if !allowed {
			return a.deny(ctx, id, method, rule.role, "")
		}
		return nil
	}
	for _, c := range ids {
		if !policy.Allows(id, rule.role, c) {
			return a.deny(ctx, id, method, rule.role, c)
		}
	}
	return nil
}

func (a *Auth) deny(ctx context.Context, id, method string, role Role, credentialID string) error {
	a.refusals.refuse(ctx, refusedPermissionDenied, "call denied", "caller", id, "method", method, "role_needed", role.String(), "credential_id", credentialID)
	if credentialID == "" {
		return status.Errorf(codes.PermissionDenied, "permission denied: %s needs the %s role", method, role)
	}
	return status.Errorf(codes.PermissionDenied, "permission denied: %s on credential %q needs the %s role", method, credentialID, role)
}

// mayReceive reports whether the caller may see a notice about
// credentialID, under the policy in force now (a reload narrows open
// streams too).
func (a *Auth) mayReceive(ctx context.Context, credentialID string) bool {
	if a.open {
		return true
	}
	id, _ := IdentityFromContext(ctx)
	return a.policy.Policy().Allows(id, RoleConsumer, credentialID)
}

// maxWatchStreams is how many WatchRevocations streams the caller may have
// open at once: what its policy rules say (max_watch_streams), else def.
func (a *Auth) maxWatchStreams(ctx context.Context, def int) int {
	id, _ := IdentityFromContext(ctx)
	return a.maxWatchStreamsOf(id, def)
}

// maxWatchStreamsOf is maxWatchStreams for the caller identified as id.
func (a *Auth) maxWatchStreamsOf(id string, def int) int {
	if a.open {
		return def
	}
	if n, ok := a.policy.Policy().MaxWatchStreams(id); ok {
		return n
	}
	return def
}

// stillAuthenticated re-establishes a streaming call's identity before each
// message it sends: a watch lives for hours, and a token removed from the
// tokens file, a client CA removed from the bundle or a certificate that
// expired must end it, not just refuse the caller's next call.
func (a *Auth) stillAuthenticated(ctx context.Context) error {
	if a.open {
		return nil
	}
	was, _ := IdentityFromContext(ctx)
	p, _ := peer.FromContext(ctx)
	if id, why := a.identify(ctx, p); id == "" || id != was {
		if why == "" {
			why = "the credentials now name another identity"
		}
		a.log.InfoContext(ctx, "stream no longer authenticated", "reason", why, "method", methodOf(ctx), "caller", was, "peer.address", peerAddr(p))
		return errUnauthenticated
	}
	return nil
}

// needsAuth selects every call but health checks, which load balancers
// and orchestrators make without credentials.
func needsAuth(_ context.Context, c interceptors.CallMeta) bool {
	return c.Service != healthpb.Health_ServiceDesc.ServiceName
}

// authenticators identify the caller (every call but health checks);
// authorizers then check the policy. Interceptors may run between them:
// the rate limiter does, so that denied calls count against their caller.
func (a *Auth) unaryAuthenticator() grpc.UnaryServerInterceptor {
	return selector.UnaryServerInterceptor(grpcauth.UnaryServerInterceptor(a.authenticate), selector.MatchFunc(needsAuth))
}

func (a *Auth) unaryAuthorizer() grpc.UnaryServerInterceptor {
	return selector.UnaryServerInterceptor(a.authorizeUnary, selector.MatchFunc(needsAuth))
}

func (a *Auth) streamAuthenticator() grpc.StreamServerInterceptor {
	return selector.StreamServerInterceptor(grpcauth.StreamServerInterceptor(a.authenticate), selector.MatchFunc(needsAuth))
}

func (a *Auth) streamAuthorizer() grpc.StreamServerInterceptor {
	return selector.StreamServerInterceptor(a.authorizeStream, selector.MatchFunc(needsAuth))
}

func (a *Auth) authorizeUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := a.authorize(ctx, info.FullMethod, req); err != nil {
		return nil, err
	}
	if info.FullMethod == rotavaultv1.TokenVaultService_Reauthenticate_FullMethodName && a.isAdmin(ctx) {
		// Only an admin, who could configure a credential's scopes
		// anyway, may start a flow asking for others.
		ctx = authflow.WithScopeWidening(ctx)
	}
	return handler(ctx, req)
}

// isAdmin reports whether the caller holds the admin role.
func (a *Auth) isAdmin(ctx context.Context) bool {
	if a.open {
		return true
	}
	id, _ := IdentityFromContext(ctx)
	return a.policy.Policy().Allows(id, RoleAdmin, "")
}

// authorizeStream authorizes on the first request message (the request of
// a server-streaming call arrives through RecvMsg, inside the handler) and
// drops notices the caller may not see.
func (a *Auth) authorizeStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if info.IsClientStream {
		// No client-streaming method exists; authorize the method alone
		// rather than guess at a stream of requests.
		if err := a.authorize(ss.Context(), info.FullMethod, nil); err != nil {
			return err
		}
		return handler(srv, ss)
	}
	return handler(srv, &authorizedStream{ServerStream: ss, auth: a, method: info.FullMethod})
}

type authorizedStream struct {
	grpc.ServerStream
	auth       *Auth
	method     string
	authorized bool
}

func (s *authorizedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if !s.authorized {
		if err := s.auth.authorize(s.Context(), s.method, m); err != nil {
			return err
		}
		s.authorized = true
	}
	return nil
}

func (s *authorizedStream) SendMsg(m any) error {
	if !s.authorized {
		return status.Error(codes.Internal, "internal error: response before an authorized request")
	}
	if err := s.auth.stillAuthenticated(s.Context()); err != nil {
		return err
	}
	if r, ok := m.(*rotavaultv1.WatchRevocationsResponse); ok {
		if n := r.GetNotice(); n != nil && !s.auth.mayReceive(s.Context(), n.GetCredentialId()) {
			return nil
		}
	}
	return s.ServerStream.SendMsg(m)
}

// callerSlot carries the identity back out to the access log, whose
// interceptor runs before authentication and reads its fields from its own
// context when the call ends.
type callerSlot struct {
	id atomic.Pointer[string]
	// refused: the call was refused and logged as such, sampled; the
	// access log skips it.
	refused atomic.Bool
}

type callerSlotKey struct{}

func withCallerSlot(ctx context.Context) (context.Context, *callerSlot) {
	s := &callerSlot{}
	return context.WithValue(ctx, callerSlotKey{}, s), s
}

func callerSlotUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, _ = withCallerSlot(ctx)
	return handler(ctx, req)
}

func callerSlotStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, _ := withCallerSlot(ss.Context())
	return handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
}

// callerLogFields adds the authenticated caller to access-log lines.
func callerLogFields(ctx context.Context) logging.Fields {
	if s, ok := ctx.Value(callerSlotKey{}).(*callerSlot); ok {
		if id := s.id.Load(); id != nil {
			return logging.Fields{"caller", *id}
		}
	}
	return nil
}
