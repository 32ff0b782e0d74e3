package integration

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/h2raw"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/server"
)

// Flood parameters: the attack the security review ran against a serve
// with gRPC's defaults, which pinned about 1 GB of heap (1.9 GB resident).
const (
	floodConns        = 100      // connections sending unfinished header blocks, each reconnecting when cut off
	floodHeaderBytes  = 15 << 20 // each one's header block
	floodReconnect    = time.Second
	floodHealthWatch  = 40_000 // health Watch calls, held open where accepted
	floodWatchConns   = 40     // connections carrying them (1,000 streams each)
	floodCallers      = 32     // the authorized caller's concurrent GetAccessToken calls
	floodMeasureEvery = 50 * time.Millisecond
)

// BenchmarkFloodKeepsAuthorizedCallerServed runs `rotavault serve` (the
// built binary: its own process, so its resident memory is the server's
// alone) with bearer tokens and a policy, and measures an authorized
// caller's cached GetAccessToken throughput — from 127.0.0.2, another
// source host than the attacker's — without and then during a flood from
// 127.0.0.1 of 100 connections sending 15 MB header blocks that never end
// (each reconnecting a second after the server cuts it off) plus 40,000
// health Watch calls, held open where accepted. It reports the
// throughput during the flood as a ratio of the one without — the mean of
// a phase before and one after the flood — (target ≥ 0.5) and the growth of the server's resident memory from before the
// flood to its highest sample during it (target < 128 MiB).
//
//	go test ./integration -run XXX -bench FloodKeepsAuthorizedCallerServed -benchtime 1x -count 3
func BenchmarkFloodKeepsAuthorizedCallerServed(b *testing.B) {
	const measure = 3 * time.Second
	for range b.N {
		f := startFloodTarget(b)
		caller := f.authorizedCaller(b, net.IPv4(127, 0, 0, 2))
		caller.rate(b, time.Second) // warm-up: the token is cached, the connection up
		rssBefore := f.rss(b)
		quiet := caller.rate(b, measure)

		ctx, stop := context.WithCancel(b.Context())
		var attackers sync.WaitGroup
		var cutOff atomic.Int64
		for range floodConns {
			attackers.Go(func() { f.headerFlood(ctx, &cutOff) })
		}
		accepted, refused := f.healthWatchFlood(ctx, b, &attackers)
		peak := make(chan int64, 1)
		go func() { peak <- f.peakRSS(ctx, rssBefore) }()
		loud := caller.rate(b, measure)
		stop()
		attackers.Wait()
		growth := float64(<-peak-rssBefore) / (1 << 20)
		// The baseline brackets the flood: on a shared machine the load
		// of others changes from one phase to the next.
		quiet = (quiet + caller.rate(b, measure)) / 2

		b.ReportMetric(loud/quiet, "throughput-ratio")
		b.ReportMetric(growth, "rss-growth-MiB")
		b.ReportMetric(quiet, "quiet-calls/s")
		b.ReportMetric(loud, "flood-calls/s")
		b.Logf("quiet %.0f calls/s, during the flood %.0f calls/s (ratio %.2f); resident memory %d MiB before, +%.1f MiB at the peak; "+
			"header-flood connections cut off: %d; health watches accepted %d, refused %d",
			quiet, loud, loud/quiet, rssBefore>>20, growth, cutOff.Load(), accepted, refused)
	}
}

// floodTarget is a serve process with a credential "acme" whose access
// token a consumer identity may take.
type floodTarget struct {
	proc   *replicaProcess
	addr   string
	token  string // the consumer's bearer token
	procFS string // /proc/PID/status
}

func startFloodTarget(b *testing.B) *floodTarget {
	b.Helper()
	dir := b.TempDir()
	keyFile := filepath.Join(dir, "store.key")
	if out, err := exec.Command(rotavaultBinary(b), "store", "generate-key", "--out", keyFile).CombinedOutput(); err != nil {
		b.Fatalf("generate-key: %v\n%s", err, out)
	}
	const adminToken, consumerToken = "flood-admin-token-5d1f", "flood-consumer-token-93ab"
	tokens := fmt.Sprintf("bench-admin %s\nbench-consumer %s\n", server.TokenDigest(adminToken), server.TokenDigest(consumerToken))
	policy := `{"rules": [{"identity": "bench-admin", "role": "admin"}, {"identity": "bench-consumer", "role": "consumer", "credentials": ["acme"]}]}`
	for name, content := range map[string]string{"tokens": tokens, "policy.json": policy} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	sim, err := providersim.Start(providersim.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sim.Close() })
	sim.AddClient(providersim.Client{ID: simClientID, Secret: simClientSecret})

	// The rate limit is off so that the caller's throughput shows what the
	// flood costs it, not the limiter's ceiling; the flood's calls never
	// authenticate, so the limiter would not see them anyway.
	// Logging at warn (access lines of successful calls off, as busy
	// deployments do), so the server is found on a port picked here.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := lis.Addr().String()
	_ = lis.Close()
	proc, addr := startServeProcess(b, nil, "--addr", port, "--data-dir", filepath.Join(dir, "data"),
		"--store-key-file", keyFile, "--bearer-tokens", filepath.Join(dir, "tokens"), "--policy", filepath.Join(dir, "policy.json"),
		"--rate-limit", "-1", "--log-level", "warn")
	f := &floodTarget{proc: proc, addr: addr, token: consumerToken, procFS: fmt.Sprintf("/proc/%d/status", proc.cmd.Process.Pid)}

	conn := f.dial(b, nil, adminToken)
	admin := rotavaultv1.NewCredentialAdminServiceClient(conn)
	spec := &rotavaultv1.CredentialSpec{ProviderKind: rotavaultv1.ProviderKind_PROVIDER_KIND_SALESFORCE, BaseUrl: sim.URL(),
		ClientId: simClientID, ClientSecret: simClientSecret, Scopes: []string{"api", "refresh_token"}}
	if _, err := admin.CreateCredential(ctxT(b), &rotavaultv1.CreateCredentialRequest{CredentialId: "acme", Spec: spec}); err != nil {
		b.Fatal(err)
	}
	rt, err := sim.IssueRefreshToken(simClientID, []string{"api", "refresh_token"})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := rotavaultv1.NewTokenVaultServiceClient(conn).Reauthenticate(ctxT(b), &rotavaultv1.ReauthenticateRequest{CredentialId: "acme",
		Flow: &rotavaultv1.ReauthenticateRequest_RefreshTokenImport{RefreshTokenImport: &rotavaultv1.RefreshTokenImport{RefreshToken: rt}}}); err != nil {
		b.Fatal(err)
	}
	return f
}

// dial connects from localIP (nil: any loopback address) with token, if
// set.
func (f *floodTarget) dial(b *testing.B, localIP net.IP, token string) *grpc.ClientConn {
	b.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(loopbackBearer(token)))
	}
	if localIP != nil {
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{LocalAddr: &net.TCPAddr{IP: localIP}}).DialContext(ctx, "tcp", addr)
		}))
	}
	conn, err := grpc.NewClient(f.addr, opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close() })
	return conn
}

type floodCaller struct {
	vault rotavaultv1.TokenVaultServiceClient
}

func (f *floodTarget) authorizedCaller(b *testing.B, from net.IP) *floodCaller {
	return &floodCaller{vault: rotavaultv1.NewTokenVaultServiceClient(f.dial(b, from, f.token))}
}

// rate is the caller's GetAccessToken calls per second over d, with
// floodCallers calls in flight. Every call must succeed.
func (c *floodCaller) rate(b *testing.B, d time.Duration) float64 {
	b.Helper()
	var calls atomic.Int64
	var failed atomic.Value
	ctx, cancel := context.WithTimeout(b.Context(), d)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for range floodCallers {
		wg.Go(func() {
			for ctx.Err() == nil {
				_, err := c.vault.GetAccessToken(context.WithoutCancel(ctx), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
				if err != nil {
					failed.Store(err)
					return
				}
				calls.Add(1)
			}
		})
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatalf("the authorized caller's GetAccessToken failed: %v", err)
	}
	return float64(calls.Load()) / time.Since(start).Seconds()
}

// headerFlood sends unfinished 15 MB header blocks from 127.0.0.1, one
// connection at a time, reconnecting after each is cut off, until ctx ends.
func (f *floodTarget) headerFlood(ctx context.Context, cutOff *atomic.Int64) {
	for ctx.Err() == nil {
		c, err := h2raw.Dial(ctx, f.addr, net.IPv4(127, 0, 0, 1))
		if err == nil {
			stop := context.AfterFunc(ctx, func() { _ = c.Close() })
			if err := c.SendUnfinishedHeaders(1, floodHeaderBytes); err != nil && ctx.Err() == nil {
				cutOff.Add(1)
			} else {
				// Everything written: hold the connection until the
				// server ends it or the flood stops.
				_ = c.AwaitClose(time.Now().Add(time.Hour))
			}
			stop()
			_ = c.Close()
		}
		select {
		case <-ctx.Done():
		case <-time.After(floodReconnect):
		}
	}
}

// healthWatchFlood opens floodHealthWatch health Watch calls from
// 127.0.0.1 over floodWatchConns connections and holds those the server
// accepts until ctx ends (on wg); it returns once every call has its
// answer.
func (f *floodTarget) healthWatchFlood(ctx context.Context, b *testing.B, wg *sync.WaitGroup) (accepted, refused int64) {
	b.Helper()
	var acc, ref atomic.Int64
	var answered sync.WaitGroup
	for range floodWatchConns {
		conn := f.dial(b, net.IPv4(127, 0, 0, 1), "")
		health := healthpb.NewHealthClient(conn)
		for range floodHealthWatch / floodWatchConns {
			answered.Add(1)
			wg.Go(func() {
				w, err := health.Watch(ctx, &healthpb.HealthCheckRequest{})
				if err == nil {
					_, err = w.Recv()
				}
				if err != nil {
					ref.Add(1)
					answered.Done()
					return
				}
				acc.Add(1)
				answered.Done()
				for {
					if _, err := w.Recv(); err != nil {
						return
					}
				}
			})
		}
	}
	answered.Wait()
	return acc.Load(), ref.Load()
}

// rss is the server process's resident set size, in bytes.
func (f *floodTarget) rss(b *testing.B) int64 {
	b.Helper()
	n, err := readVmRSS(f.procFS)
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// peakRSS samples the server's resident set size until ctx ends and
// returns the highest, at least from.
func (f *floodTarget) peakRSS(ctx context.Context, from int64) int64 {
	peak := from
	t := time.NewTicker(floodMeasureEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return peak
		case <-t.C:
			if n, err := readVmRSS(f.procFS); err == nil {
				peak = max(peak, n)
			}
		}
	}
}

func readVmRSS(statusFile string) (int64, error) {
	file, err := os.Open(statusFile)
	if err != nil {
		return 0, err
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS in " + statusFile)
}
