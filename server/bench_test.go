package server

import (
	"context"
	"sync"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// BenchmarkCachedGetAccessTokenMTLSVsNoop measures what a consumer pays in
// production configuration: mTLS, identity from the client certificate,
// the policy, the rate limiter and the issuance summary, for a cached token
// — against the health check (authenticated by nothing, the floor of a
// unary RPC) on the same connection, in the same run. Reported: both
// throughputs and their ratio.
func BenchmarkCachedGetAccessTokenMTLSVsNoop(b *testing.B) {
	e := newAuthEnv(b, authEnvOptions{rateLimit: RateLimit{Rate: 1e9, Burst: 1e9}, issuanceFlush: time.Minute})
	admin := rotavaultv1.NewCredentialAdminServiceClient(e.as(idAdmin, false))
	ctx := context.Background()
	if _, err := admin.CreateCredential(ctx, &rotavaultv1.CreateCredentialRequest{CredentialId: "cred-a", Spec: e.spec()}); err != nil {
		b.Fatal(err)
	}
	rt, err := e.sim.IssueRefreshToken(simClient, nil)
	if err != nil {
		b.Fatal(err)
	}
	ops := rotavaultv1.NewTokenVaultServiceClient(e.as(idOps, false))
	if _, err := ops.Reauthenticate(ctx, &rotavaultv1.ReauthenticateRequest{CredentialId: "cred-a",
		Flow: &rotavaultv1.ReauthenticateRequest_RefreshTokenImport{RefreshTokenImport: &rotavaultv1.RefreshTokenImport{RefreshToken: rt}}}); err != nil {
		b.Fatal(err)
	}
	conn := e.as(idPayments, false)
	vault := rotavaultv1.NewTokenVaultServiceClient(conn)
	health := healthpb.NewHealthClient(conn)
	cached := func() error {
		_, err := vault.GetAccessToken(ctx, &rotavaultv1.GetAccessTokenRequest{CredentialId: "cred-a"})
		return err
	}
	noop := func() error {
		_, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	const clients = 32
	run := func(n int, call func() error) time.Duration {
		var wg sync.WaitGroup
		per := max(n/clients, 1)
		start := time.Now()
		for range clients {
			wg.Go(func() {
				for range per {
					if err := call(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		return time.Since(start) / time.Duration(per*clients)
	}
	run(2000, noop)
	run(2000, cached)
	b.ResetTimer()
	var noopPer, cachedPer time.Duration
	for range 3 {
		noopPer += run(b.N, noop) / 3
		cachedPer += run(b.N, cached) / 3
	}
	b.StopTimer()
	b.ReportMetric(float64(time.Second)/float64(noopPer), "noop-calls/s")
	b.ReportMetric(float64(time.Second)/float64(cachedPer), "cached-calls/s")
	b.ReportMetric(float64(noopPer)/float64(cachedPer), "cached/noop")
	if r := e.sim.Stats().RefreshRequests; r != 1 {
		b.Fatalf("the cached path refreshed: %d refreshes", r)
	}
}
