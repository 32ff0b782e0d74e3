package server

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

type callerCtxKey struct{}

func asCaller(name string) context.Context {
	return context.WithValue(context.Background(), callerCtxKey{}, name)
}

// One caller over its limit is refused with a retry delay; another caller is
// not affected; the first is served again once its bucket refills; buckets of
// callers gone quiet are forgotten.
func TestRateLimitIsPerCaller(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := newCallerLimiter(RateLimit{Rate: 10, Burst: 3}, func(ctx context.Context) string {
		name, _ := ctx.Value(callerCtxKey{}).(string)
		return name
	}, newRefusalLog(slog.New(slog.DiscardHandler)))
	l.now = func() time.Time { return now }
	for i := range 3 {
		if ok, _ := l.allow(asCaller("a")); !ok {
			t.Fatalf("call %d of a burst of 3 refused", i+1)
		}
	}
	ok, wait := l.allow(asCaller("a"))
	if ok || wait <= 0 || wait > 100*time.Millisecond {
		t.Fatalf("4th call: allowed=%v retry after %v, want refused with a delay of at most 100ms", ok, wait)
	}
	if ok, _ := l.allow(asCaller("b")); !ok {
		t.Fatal("another caller was refused because of the first one's burst")
	}
	now = now.Add(wait)
	if ok, _ := l.allow(asCaller("a")); !ok {
		t.Fatalf("caller still refused after the advertised %v", wait)
	}

	err := l.refuse(asCaller("a"), "/rotavault.v1.TokenVaultService/GetAccessToken", wait)
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted {
		t.Fatalf("code %v, want ResourceExhausted", st.Code())
	}
	var reason string
	var retry time.Duration
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			reason = d.Reason
		case *errdetails.RetryInfo:
			retry = d.RetryDelay.AsDuration()
		}
	}
	if reason != ReasonRateLimited || retry <= 0 {
		t.Fatalf("details: reason %q retry %v, want %s and a positive delay", reason, retry, ReasonRateLimited)
	}

	now = now.Add(time.Hour)
	l.allow(asCaller("c"))
	l.mu.Lock()
	n := len(l.buckets)
	l.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d buckets kept after an hour of quiet, want only the new caller's", n)
	}
}

// Through a real server with mTLS: the limit is per authenticated identity,
// a refused call says RESOURCE_EXHAUSTED with RATE_LIMITED and a retry
// delay, and health checks are never limited.
func TestRateLimitPerIdentityOverTLS(t *testing.T) {
	e := newAuthEnv(t, authEnvOptions{rateLimit: RateLimit{Rate: 0.001, Burst: 3}})
	get := func(conn *grpc.ClientConn, cred string) error {
		_, err := rotavaultv1.NewTokenVaultServiceClient(conn).GetAccessToken(testCtx(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: cred})
		return err
	}
	stranger := e.as(idStranger, false)
	for i := range 3 {
		if err := get(stranger, "cred-b"); status.Code(err) != codes.NotFound {
			t.Fatalf("call %d within the burst: %v, want NotFound (past the limiter)", i+1, err)
		}
	}
	err := get(stranger, "cred-b")
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted {
		t.Fatalf("call over the limit: %v, want ResourceExhausted", err)
	}
	var reason string
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			reason = info.Reason
		}
	}
	if reason != ReasonRateLimited {
		t.Fatalf("reason %q, want %s", reason, ReasonRateLimited)
	}
	payments := e.as(idPayments, false)
	if err := get(payments, "cred-a"); status.Code(err) != codes.NotFound {
		t.Fatalf("another identity was limited by the first one's calls: %v", err)
	}
	for range 5 {
		resp, err := healthpb.NewHealthClient(stranger).Check(testCtx(t), &healthpb.HealthCheckRequest{})
		if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health check of a limited caller: %v %v", resp, err)
		}
	}
}

// A caller flooding calls it is not permitted to make is limited like any
// other: the limiter runs before authorization.
func TestDeniedCallsCountAgainstTheLimit(t *testing.T) {
	e := newAuthEnv(t, authEnvOptions{rateLimit: RateLimit{Rate: 0.001, Burst: 2}})
	stranger := rotavaultv1.NewTokenVaultServiceClient(e.as(idStranger, false))
	for i := range 2 {
		_, err := stranger.GetAccessToken(testCtx(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "cred-a"})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("denied call %d: %v, want PermissionDenied", i+1, err)
		}
	}
	_, err := stranger.GetAccessToken(testCtx(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "cred-a"})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third denied call: %v, want ResourceExhausted", err)
	}
}
