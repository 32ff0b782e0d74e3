package integration

import (
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/server"
	"github.com/rotavault/rotavault/vaultstore"
)

// TestVaultBackedNode runs the core scenarios with the records in a real
// Vault (KV v2, check-and-set on every write) instead of the embedded store:
// plain, and envelope-encrypted with Transit.
func TestVaultBackedNode(t *testing.T) {
	for _, transit := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "transit"}[transit], func(t *testing.T) {
			testVaultBackedNode(t, transit)
		})
	}
}

func testVaultBackedNode(t *testing.T, transit bool) {
	v := vaulttest.StartDev(t)
	e := newEnv(t, envOptions{vault: v, vaultTransit: transit})
	oldToken := e.installSalesforce("acme")
	first := e.token("acme")

	t.Run("records as Vault holds them", func(t *testing.T) {
		raw, err := v.RootClient(t).KVv2("secret").Get(ctxT(t), vaultstore.DefaultPrefix+"/"+e.key.ID()+"/credentials/acme")
		if err != nil {
			t.Fatal(err)
		}
		_, sealed := raw.Data["sealed"]
		_, clear := raw.Data["value"]
		if sealed != transit || clear == transit {
			t.Fatalf("with transit=%v the record holds the fields %v", transit, slices.Collect(maps.Keys(raw.Data)))
		}
	})

	t.Run("concurrent callers share one refresh", func(t *testing.T) {
		before := e.sim.Stats().RefreshRequests
		e.expire()
		var wg sync.WaitGroup
		for range concurrentCallers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"}); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if got := e.sim.Stats().RefreshRequests - before; got != 1 {
			t.Fatalf("%d refreshes, want 1", got)
		}
	})
	t.Run("restart keeps the family", func(t *testing.T) {
		e.restart()
		e.expire()
		if tok := e.token("acme"); tok.GetFamilyId() != first.GetFamilyId() || e.sim.Stats().ReuseDetections != 0 {
			t.Fatalf("after restart: %+v", tok)
		}
	})
	t.Run("theft revokes, notices resume by cursor", func(t *testing.T) {
		_, start := e.watch(ctxT(t), "", "acme")
		resp, err := http.PostForm(e.sim.URL()+"/services/oauth2/token", url.Values{
			"grant_type": {"refresh_token"}, "refresh_token": {oldToken}, "client_id": {simClientID}, "client_secret": {simClientSecret},
		})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		e.expire()
		_, err = e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
		wantCode(t, err, codes.FailedPrecondition, server.ReasonReauthenticationRequired)
		e.restart()
		stream, _ := e.watch(ctxT(t), start, "acme")
		if n := nextNotice(t, stream); n.GetKind() != rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_REVOKED || n.GetFamilyId() != first.GetFamilyId() {
			t.Fatalf("replayed notice = %+v", n)
		}
	})
}

// TestVaultRestartMidTraffic crashes and restarts a Vault with persistent
// storage under a running node: nothing is lost, callers get a cached token
// or UNAVAILABLE meanwhile, and traffic resumes by itself.
func TestVaultRestartMidTraffic(t *testing.T) {
	v := vaulttest.StartPersistent(t)
	e := newEnv(t, envOptions{vault: v})
	e.installSalesforce("acme")
	first := e.token("acme")

	awaitHealth(t, e, healthpb.HealthCheckResponse_SERVING)
	v.Stop()
	// A still-valid token is served from memory during the outage.
	if tok := e.token("acme"); tok.GetAccessToken() != first.GetAccessToken() {
		t.Fatal("the cached token was not served during the outage")
	}
	// Load balancers are told this replica cannot reach its store.
	awaitHealth(t, e, healthpb.HealthCheckResponse_NOT_SERVING)
	// A refresh cannot be claimed without Vault: UNAVAILABLE, and the
	// provider is not called (nothing could be stored).
	refreshes := e.sim.Stats().RefreshRequests
	e.expire()
	_, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
	wantCode(t, err, codes.Unavailable, server.ReasonStoreUnavailable)
	if e.sim.Stats().RefreshRequests != refreshes {
		t.Fatal("a refresh reached the provider while its result could not be stored")
	}

	v.Restart()
	awaitHealth(t, e, healthpb.HealthCheckResponse_SERVING)
	tok := e.token("acme") // no reconnect step: traffic resumes by itself
	if tok.GetFamilyId() != first.GetFamilyId() || tok.GetGeneration() != first.GetGeneration()+1 {
		t.Fatalf("after the restart: %+v", tok)
	}
	// And the state survived in Vault's storage: a fresh node agrees.
	e.restart()
	e.expire()
	if again := e.token("acme"); again.GetFamilyId() != first.GetFamilyId() || e.sim.Stats().ReuseDetections != 0 {
		t.Fatalf("state lost across the Vault restart: %+v", e.sim.Stats())
	}
}

// awaitHealth polls the node's gRPC health service until it reports want.
func awaitHealth(t *testing.T, e *env, want healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	health := healthpb.NewHealthClient(e.conn)
	poll.UntilSeen(t, awaitDeadline, "health "+want.String(), func() (bool, string) {
		resp, err := health.Check(ctxT(t), &healthpb.HealthCheckRequest{Service: rotavaultv1.TokenVaultService_ServiceDesc.ServiceName})
		return err == nil && resp.GetStatus() == want, fmt.Sprintf("%v %v", resp.GetStatus(), err)
	})
}

// TestRevokedVaultTokenDoesNotFailCallers revokes the node's AppRole token
// in the middle of traffic: the store logs in again and callers notice
// nothing, refreshes included.
func TestRevokedVaultTokenDoesNotFailCallers(t *testing.T) {
	v := vaulttest.StartDev(t)
	root := v.RootClient(t)
	roleID, secretIDFile := v.AppRole(t, "", "")
	login, err := vaultstore.AppRole(roleID, secretIDFile, "")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{vault: v, vaultLogin: login})
	e.installSalesforce("acme")
	first := e.token("acme")

	if err := root.Sys().RevokePrefix("auth/approle/"); err != nil {
		t.Fatal(err)
	}
	e.expire()
	tok := e.token("acme") // claim and result writes meet the revoked token
	if tok.GetFamilyId() != first.GetFamilyId() || tok.GetGeneration() != first.GetGeneration()+1 {
		t.Fatalf("after revocation: %+v", tok)
	}
	if logins := e.store.(*vaultstore.Store).Logins(); logins != 2 {
		t.Fatalf("logins = %d, want the start-up one and one after the revocation", logins)
	}
}
