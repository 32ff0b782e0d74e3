package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/durationpb"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/internal/syncbuf"
	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/server"
)

// Replica processes use short claims so takeovers happen within seconds.
const (
	killClaimTTL    = "3s"
	killClaimMargin = "1s"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// rotavaultBinary builds cmd/rotavault once for the package's tests.
func rotavaultBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "rotavault-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "rotavault")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/rotavault/rotavault/cmd/rotavault").CombinedOutput()
		if err != nil {
			buildErr = &buildError{err: err, out: string(out)}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return "go build: " + e.err.Error() + "\n" + e.out }

// replicaProcess is `rotavault serve --store vault` in a process of its own.
type replicaProcess struct {
	cmd     *exec.Cmd
	exited  chan struct{}
	logs    *syncbuf.Buffer // every line the process wrote to stderr
	dataDir string
	vault   rotavaultv1.TokenVaultServiceClient
	admin   rotavaultv1.CredentialAdminServiceClient
}

// startReplicaProcess starts a replica with the short claims of killClaimTTL
// and killClaimMargin, or with claimArgs when given.
func startReplicaProcess(t *testing.T, v *vaulttest.Server, prefix string, claimArgs ...string) *replicaProcess {
	t.Helper()
	if len(claimArgs) == 0 {
		claimArgs = []string{"--refresh-claim-ttl", killClaimTTL, "--refresh-claim-margin", killClaimMargin}
	}
	return startVaultReplicaClaims(t, []string{"VAULT_ADDR=" + v.Addr, "VAULT_TOKEN=" + v.Token}, claimArgs, "--vault-prefix", prefix)
}

// startVaultReplica runs `rotavault serve --store vault` with short claims,
// env and the extra args, and connects to it.
func startVaultReplica(t testing.TB, env []string, args ...string) *replicaProcess {
	t.Helper()
	return startVaultReplicaClaims(t, env, []string{"--refresh-claim-ttl", killClaimTTL, "--refresh-claim-margin", killClaimMargin}, args...)
}

// startVaultReplicaClaims is startVaultReplica with the claim flags given.
func startVaultReplicaClaims(t testing.TB, env, claimArgs []string, args ...string) *replicaProcess {
	t.Helper()
	dataDir := t.TempDir()
	p, addr := startServeProcess(t, env, append(append([]string{
		"--addr", "127.0.0.1:0", "--data-dir", dataDir, "--store", "vault"}, claimArgs...), args...)...)
	p.dataDir = dataDir
	p.connect(t, addr)
	return p
}

// connect points the process's API clients at addr.
func (p *replicaProcess) connect(t testing.TB, addr string) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	p.vault = rotavaultv1.NewTokenVaultServiceClient(conn)
	p.admin = rotavaultv1.NewCredentialAdminServiceClient(conn)
}

// startServeProcess runs `rotavault serve args...` in a process of its own,
// with env added to ours, killed at the end of the test; it returns once
// the server serves, with the address it listens on: the one it logs, or
// for a server logging less than info, the --addr given (not port 0)
// once a health check passes there.
func startServeProcess(t testing.TB, env []string, args ...string) (*replicaProcess, string) {
	t.Helper()
	cmd := exec.Command(rotavaultBinary(t), append([]string{"serve"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &replicaProcess{cmd: cmd, exited: make(chan struct{}), logs: &syncbuf.Buffer{}}
	addrCh := make(chan string, 1)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			_, _ = p.logs.Write(append(sc.Bytes(), '\n'))
			var line struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "rotavault serving" {
				addrCh <- line.Addr
			}
		}
	}()
	go func() {
		// Wait closes the pipe: read it to the end first.
		<-scanned
		_ = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(p.kill)
	stopHealth := awaitHealthyAt(addrArg(args), addrCh)
	defer stopHealth()
	select {
	case addr := <-addrCh:
		return p, addr
	case <-p.exited:
		t.Fatalf("rotavault serve exited during start-up:\n%s", p.logs.String())
	case <-time.After(awaitDeadline):
		t.Fatal("rotavault serve did not start serving")
	}
	return nil, ""
}

// addrArg is the value of --addr in args, "" if absent or port 0.
func addrArg(args []string) string {
	for i, a := range args {
		if a == "--addr" && i+1 < len(args) && !strings.HasSuffix(args[i+1], ":0") {
			return args[i+1]
		}
	}
	return ""
}

// awaitHealthyAt sends addr on ready once a health check passes there
// (nothing if addr is ""), until stop is called.
func awaitHealthyAt(addr string, ready chan<- string) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	if addr == "" {
		return cancel
	}
	go func() {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return
		}
		defer conn.Close()
		for ctx.Err() == nil {
			cctx, ccancel := context.WithTimeout(ctx, time.Second)
			_, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
			ccancel()
			if err == nil {
				select {
				case ready <- addr:
				default:
				}
				return
			}
		}
	}()
	return cancel
}

// kill sends SIGKILL: no shutdown, no last write.
func (p *replicaProcess) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

type killSetup struct {
	sim  *providersim.Server
	a, b *replicaProcess
	cur  *rotavaultv1.GetAccessTokenResponse
}

func setupKill(t *testing.T, grace time.Duration) *killSetup {
	t.Helper()
	return setupKillClaim(t, grace)
}

// setupKillClaim is setupKill with the replicas' claim flags (see
// startReplicaProcess).
func setupKillClaim(t *testing.T, grace time.Duration, claimArgs ...string) *killSetup {
	t.Helper()
	v := vaulttest.StartDev(t)
	sim, err := providersim.Start(providersim.Config{ReuseGrace: grace})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	sim.AddClient(providersim.Client{ID: simClientID, Secret: simClientSecret})
	k := &killSetup{sim: sim, a: startReplicaProcess(t, v, "rotavault/kill", claimArgs...), b: startReplicaProcess(t, v, "rotavault/kill", claimArgs...)}
	t.Cleanup(func() {
		k.a.kill()
		k.b.kill()
		texts := auditText(t, k.a.dataDir, k.b.dataDir)
		texts["replica A logs"], texts["replica B logs"] = k.a.logs.String(), k.b.logs.String()
		checkNoSecrets(t, secretsOf(t, sim, "", v), texts)
	})
	k.install(t, grace)
	return k
}

// install creates credential acme (with the reuse grace period) on
// replica a, imports a family and takes its first access token.
func (k *killSetup) install(t *testing.T, grace time.Duration) {
	t.Helper()
	spec := &rotavaultv1.CredentialSpec{
		ProviderKind: rotavaultv1.ProviderKind_PROVIDER_KIND_SALESFORCE, BaseUrl: k.sim.URL(),
		ClientId: simClientID, ClientSecret: simClientSecret, Scopes: []string{"api", "refresh_token"},
		ReuseGracePeriod: durationpb.New(grace),
	}
	if _, err := k.a.admin.CreateCredential(ctxT(t), &rotavaultv1.CreateCredentialRequest{CredentialId: "acme", Spec: spec}); err != nil {
		t.Fatal(err)
	}
	rt, err := k.sim.IssueRefreshToken(simClientID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.a.vault.Reauthenticate(ctxT(t), &rotavaultv1.ReauthenticateRequest{CredentialId: "acme",
		Flow: &rotavaultv1.ReauthenticateRequest_RefreshTokenImport{RefreshTokenImport: &rotavaultv1.RefreshTokenImport{RefreshToken: rt}}}); err != nil {
		t.Fatal(err)
	}
	if k.cur, err = k.a.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"}); err != nil {
		t.Fatal(err)
	}
}

// killAfterTheProviderRotated has replica a refresh against a provider that
// rotates and never answers, and SIGKILLs it then: the new refresh token
// dies with it. It returns the provider's counters from before.
func (k *killSetup) killAfterTheProviderRotated(t *testing.T) providersim.Stats {
	t.Helper()
	k.revokeCurrentAccessToken(t)
	before := k.sim.Stats()
	k.sim.InjectFailure(providersim.FailHang, 1) // rotates, never answers
	go func() { _, _ = k.forceRefresh(context.Background(), k.a) }()
	awaitStats(t, k.sim, func(s providersim.Stats) bool { return s.Rotations == before.Rotations+1 })
	k.a.kill()
	return before
}

// forceRefresh makes replica p refresh on the real clock: the current access
// token is revoked at the provider, and a consumer reports it rejected.
func (k *killSetup) forceRefresh(ctx context.Context, p *replicaProcess) (*rotavaultv1.GetAccessTokenResponse, error) {
	return p.vault.GetAccessToken(ctx, &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme",
		RejectedToken: &rotavaultv1.RejectedToken{Token: &rotavaultv1.RejectedToken_Fingerprint{Fingerprint: k.cur.GetFingerprint()}}})
}

func (k *killSetup) revokeCurrentAccessToken(t *testing.T) {
	t.Helper()
	resp, err := http.PostForm(k.sim.URL()+"/services/oauth2/revoke", url.Values{"token": {k.cur.GetAccessToken()}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

// awaitStats polls the simulator's counters until cond holds.
func awaitStats(t *testing.T, sim *providersim.Server, cond func(providersim.Stats) bool) {
	t.Helper()
	poll.UntilSeen(t, awaitDeadline, "the provider in the expected state", func() (bool, string) {
		s := sim.Stats()
		return cond(s), fmt.Sprintf("%+v", s)
	})
}

func TestReplicaKilledHoldingTheClaimBeforeTheProviderProcessed(t *testing.T) {
	k := setupKill(t, 0)
	k.revokeCurrentAccessToken(t)
	before := k.sim.Stats()
	k.sim.SetLatency(time.Minute) // A's refresh waits at the provider, unprocessed
	go func() { _, _ = k.forceRefresh(context.Background(), k.a) }()
	if err := k.sim.WaitForTokenRequests(ctxT(t), before.TokenRequests+1); err != nil {
		t.Fatal(err)
	}
	k.a.kill()
	k.sim.SetLatency(0)

	tok, err := k.forceRefresh(ctxT(t), k.b) // waits out A's claim, then takes over
	if err != nil {
		t.Fatalf("takeover: %v", err)
	}
	s := k.sim.Stats()
	t.Logf("provider saw: %d refresh requests, %d rotations, %d reuse detections", s.RefreshRequests-before.RefreshRequests, s.Rotations-before.Rotations, s.ReuseDetections)
	if tok.GetFamilyId() != k.cur.GetFamilyId() || s.ReuseDetections != 0 || s.Rotations != before.Rotations+1 {
		t.Fatalf("rotation did not continue cleanly: %+v", s)
	}
}

func TestReplicaKilledAfterTheProviderRotated(t *testing.T) {
	t.Run("no grace period: a lost rotation, reported once", func(t *testing.T) {
		k := setupKill(t, 0)
		stream, err := k.b.vault.WatchRevocations(ctxT(t), &rotavaultv1.WatchRevocationsRequest{CredentialIds: []string{"acme"}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil { // started
			t.Fatal(err)
		}
		before := k.killAfterTheProviderRotated(t)

		_, err = k.forceRefresh(ctxT(t), k.b)
		wantCode(t, err, codes.FailedPrecondition, server.ReasonReauthenticationRequired)
		if n := nextNotice(t, stream); n.GetReason() != rotavaultv1.RevocationReason_REVOCATION_REASON_LOST_ROTATION {
			t.Fatalf("reason %s, want LOST_ROTATION", n.GetReason())
		}
		s := k.sim.Stats()
		t.Logf("provider saw: %d refresh requests, %d rotations, %d reuse detections, %d families revoked",
			s.RefreshRequests-before.RefreshRequests, s.Rotations-before.Rotations, s.ReuseDetections, s.FamiliesRevoked)
		if s.ReuseDetections != 1 {
			t.Fatalf("want exactly one reuse (the takeover): %+v", s)
		}
	})
	t.Run("grace period: the takeover recovers", func(t *testing.T) {
		k := setupKill(t, time.Minute)
		before := k.killAfterTheProviderRotated(t)

		tok, err := k.forceRefresh(ctxT(t), k.b)
		if err != nil {
			t.Fatalf("takeover within the grace period: %v", err)
		}
		s := k.sim.Stats()
		t.Logf("provider saw: %d refresh requests, %d rotations, %d grace reuses", s.RefreshRequests-before.RefreshRequests, s.Rotations-before.Rotations, s.GraceReuses)
		if tok.GetFamilyId() != k.cur.GetFamilyId() || s.GraceReuses != 1 || s.FamiliesRevoked != 0 || !k.sim.AccessTokenActive(tok.GetAccessToken()) {
			t.Fatalf("not recovered: %+v", s)
		}
	})
}
