package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/rotavault/rotavault/client"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/fositeserver"
	"github.com/rotavault/rotavault/internal/syncbuf"
	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/providersim"
)

// The randomized fault test (issue 13 §5): three `rotavault serve --store
// vault` processes on one Vault with file storage, credentials at ory/fosite
// and at the Salesforce simulator (with and without a reuse grace period),
// a load of GetAccessToken through the Go client and through bare calls with
// every token handed out checked at its provider right after, a watcher,
// and a seeded random schedule of faults. Every invariant is then checked
// over the whole recorded history (chaos_check_test.go).
//
// Environment:
//
//	ROTAVAULT_FAULT_SEED      replay a run (the seed is printed at the start)
//	ROTAVAULT_FAULT_DURATION  how long faults are injected (default 75s, 30s with -short)
//	ROTAVAULT_FAULT_STRICT=1  fail on invariants still pending a fix too, and
//	                          let outages outlast the claim (the next one)
//	ROTAVAULT_FAULT_BEYOND_CLAIM=1  provider latency beyond the claim budget
//	                          and Vault outages beyond the claim
//	ROTAVAULT_FAULT_LOGS      directory to keep the run's logs in (default: a
//	                          new temporary directory, removed when the run passes)
const (
	faultSeedEnv     = "ROTAVAULT_FAULT_SEED"
	faultDurationEnv = "ROTAVAULT_FAULT_DURATION"
	faultStrictEnv   = "ROTAVAULT_FAULT_STRICT"
	faultBeyondEnv   = "ROTAVAULT_FAULT_BEYOND_CLAIM"
	faultLogsEnv     = "ROTAVAULT_FAULT_LOGS"

	faultDefaultDuration = 75 * time.Second
	faultShortDuration   = 30 * time.Second

	// faultTokenLife is short so that every credential rotates every few
	// seconds, under every fault.
	faultTokenLife = 20 * time.Second
	// faultGrace is the simulator's reuse grace for the "sfgrace"
	// credential; the claim (faultClaimTTL) fits inside it.
	faultGrace = 20 * time.Second
	// faultSettle is how long a fault's effects may outlast it: a claim
	// taken before it runs out (faultClaimTTL), a caller's call in flight
	// ends (faultCallTimeout).
	faultSettle = faultClaimTTL + faultCallTimeout
	// faultClaimTTL and faultClaimMargin are the replicas' refresh claim:
	// short, so that takeovers happen within the run, and long enough that
	// a Vault restart (about 2–4 s here) fits in it unless asked otherwise.
	faultClaimTTL    = 8 * time.Second
	faultClaimMargin = 2 * time.Second
	// faultRecoveryBound bounds the time from the last fault's end until
	// every replica serves every credential again.
	faultRecoveryBound = 15 * time.Second
	faultCallTimeout   = 2 * time.Second
	// faultQuiet is the load without faults after the schedule, in which
	// no call may fail.
	faultQuiet = 10 * time.Second
	// faultStepBound bounds each wait of the schedule for an outcome (a
	// lost answer to happen, a notice to arrive).
	faultStepBound = 45 * time.Second

	faultReplicas = 3
)

// pendingFix names violations main still shows, with the fix each waits
// for: they are reported (counts and events) but fail the run only with
// ROTAVAULT_FAULT_STRICT=1. Delete an entry when its fix lands.
type pendingFix struct {
	invariant string
	match     func(violation) bool // nil: every violation of the invariant
	why       string
}

func pendingFixes() []pendingFix {
	// None: §1 (the serving cutoff, use_until in the Go client) and §3
	// (the store blamed for its outage, a takeover's token served instead
	// of ABORTED) have landed, and every invariant fails the run.
	return nil
}

// pendingOf is the fix v waits for, "" if none.
func pendingOf(v violation) string {
	for _, p := range pendingFixes() {
		if p.invariant == v.Invariant && (p.match == nil || p.match(v)) {
			return p.why
		}
	}
	return ""
}

type faultConfig struct {
	seed     uint64
	duration time.Duration
	strict   bool
	// beyondClaim lets provider latency exceed the claim budget (claim TTL
	// minus margin) and Vault outages exceed the claim. Main loses the
	// family at a provider without grace in both: the call abandoned at
	// the budget is processed by the provider after the retry rotated
	// (seed 2100482958178106 with -short and a 3 s claim), and a holder
	// whose result waits in memory for Vault is taken over with the old
	// refresh token (seed 1332188789877102, 3 s claim). Off by default
	// until that is fixed.
	beyondClaim bool
	logDir      string
}

func faultConfigFromEnv(t *testing.T) faultConfig {
	t.Helper()
	cfg := faultConfig{duration: faultDefaultDuration, strict: os.Getenv(faultStrictEnv) == "1"}
	cfg.beyondClaim = cfg.strict || os.Getenv(faultBeyondEnv) == "1"
	if testing.Short() {
		cfg.duration = faultShortDuration
	}
	if s := os.Getenv(faultSeedEnv); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", faultSeedEnv, s, err)
		}
		cfg.seed = seed
	} else {
		cfg.seed = rand.Uint64() >> 12 // short enough to type
	}
	if s := os.Getenv(faultDurationEnv); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("%s=%q: want a positive duration such as 90s or 1h", faultDurationEnv, s)
		}
		cfg.duration = d
	}
	dir := os.Getenv(faultLogsEnv)
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "rotavault-faults-"); err != nil {
			t.Fatal(err)
		}
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg.logDir = dir
	return cfg
}

// faultProvider is one authorization server of the run, with its knobs.
type faultProvider struct {
	name  string
	cred  string
	grace bool
	sim   *providersim.Server // the simulator, or
	fos   *fositeserver.Server
	proxy *faultProxy // in front of either
	logs  *syncbuf.Buffer
	// resolved is the last refresh answer the schedule has accounted for;
	// lostInFaults counts the rotations a killed or paused replica never
	// stored, which cost the family where there is no grace.
	resolved, lostInFaults int
	// imported are the refresh tokens imported into the credential.
	imported []string
}

func (p *faultProvider) setLatency(d time.Duration) { p.proxy.SetLatency(d) }

// fail makes the next n token requests answer 503 without reaching p.
func (p *faultProvider) fail(n int) { p.proxy.Fail(n) }

// failuresLeft is how many injected 5xx answers are still to come.
func (p *faultProvider) failuresLeft() int { return p.proxy.failLeft() }

func (p *faultProvider) loseNext() { p.proxy.LoseNext(1) }

// lostAnswers: answers dropped by a lost-answer fault, and rotations found
// to have reached no replica (lostInFaults).
func (p *faultProvider) lostAnswers() int { return p.proxy.Lost() + p.lostInFaults }

func (p *faultProvider) rotations() int {
	if p.sim != nil {
		return p.sim.Stats().Rotations
	}
	return p.fos.Stats().RefreshSuccesses
}

func (p *faultProvider) reuses() int {
	if p.sim != nil {
		return p.sim.Stats().ReuseDetections
	}
	return p.fos.Stats().InvalidGrants
}

// newRefreshToken starts a fresh family at the provider.
func (p *faultProvider) newRefreshToken(ctx context.Context) (string, error) {
	if p.sim != nil {
		return p.sim.IssueRefreshToken(simClientID, []string{"api", "refresh_token"})
	}
	return p.fos.IssueRefreshToken(ctx, fositeClientID, fositeClientSecret, callbackURI, []string{"offline", "api"})
}

func (p *faultProvider) spec() *rotavaultv1.CredentialSpec {
	if p.sim != nil {
		s := &rotavaultv1.CredentialSpec{
			ProviderKind: rotavaultv1.ProviderKind_PROVIDER_KIND_SALESFORCE, BaseUrl: p.proxy.URL(),
			ClientId: simClientID, ClientSecret: simClientSecret, Scopes: []string{"api", "refresh_token"},
			AccessTokenLifetime: durationpb.New(faultTokenLife),
		}
		if p.grace {
			s.ReuseGracePeriod = durationpb.New(faultGrace)
		}
		return s
	}
	return &rotavaultv1.CredentialSpec{
		ProviderKind: rotavaultv1.ProviderKind_PROVIDER_KIND_OAUTH2,
		TokenUrl:     p.proxy.URL() + "/oauth2/token", RevocationUrl: p.proxy.URL() + "/oauth2/revoke",
		ClientId: fositeClientID, ClientSecret: fositeClientSecret, Scopes: []string{"offline", "api"},
	}
}

// valid asks the provider whether an access token is alive: the
// simulator's token table, fosite's introspection endpoint (HTTP Basic, the
// only client authentication it takes there).
func (p *faultProvider) valid(ctx context.Context, accessToken string) (bool, error) {
	if p.sim != nil {
		return p.sim.AccessTokenActive(accessToken), nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.fos.IntrospectionURL(), strings.NewReader(url.Values{"token": {accessToken}}.Encode()))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(fositeClientID), url.QueryEscape(fositeClientSecret))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var out struct {
		Active bool `json:"active"`
	}
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("introspection: HTTP %d", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return false, err
	}
	return out.Active, nil
}

// faultReplica is one replica slot: its address and data directory stay,
// its process changes at every restart.
type faultReplica struct {
	idx       int
	addr      string
	dataDir   string
	env, args []string
	procs     []*replicaProcess // every process, the current one last
	conn      *grpc.ClientConn
	client    *client.Client
	vault     rotavaultv1.TokenVaultServiceClient
	admin     rotavaultv1.CredentialAdminServiceClient
}

func (r *faultReplica) current() *replicaProcess { return r.procs[len(r.procs)-1] }

func (r *faultReplica) start(t *testing.T) {
	t.Helper()
	p, _ := startServeProcess(t, r.env, r.args...)
	r.procs = append(r.procs, p)
}

// faultRun is one run of the fault test.
type faultRun struct {
	t        *testing.T
	cfg      faultConfig
	rng      *rand.Rand
	vault    *vaulttest.Server
	provs    []*faultProvider
	replicas []*faultReplica

	mu      sync.Mutex
	hist    faultHistory
	handed  map[string]bool // every access token handed out, for the leak check
	revoked map[string]int  // LOST_ROTATION notices per credential so far
}

func (r *faultRun) record(f func(h *faultHistory)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(&r.hist)
}

func (r *faultRun) provider(cred string) *faultProvider {
	for _, p := range r.provs {
		if p.cred == cred {
			return p
		}
	}
	return nil
}

func TestFaultSchedule(t *testing.T) {
	cfg := faultConfigFromEnv(t)
	t.Logf("fault test: seed %d, faults for %s, outages beyond the claim %v (replay: %s=%d %s=%s %s=%s go test ./integration -run TestFaultSchedule)",
		cfg.seed, cfg.duration, cfg.beyondClaim, faultSeedEnv, cfg.seed, faultDurationEnv, cfg.duration, faultBeyondEnv, map[bool]string{true: "1", false: "0"}[cfg.beyondClaim])
	r := &faultRun{t: t, cfg: cfg, rng: rand.New(rand.NewPCG(cfg.seed, 0x5eed)),
		handed: make(map[string]bool), revoked: make(map[string]int)}
	r.hist = faultHistory{Seed: cfg.seed, Settle: faultSettle, RecoveryBound: faultRecoveryBound}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("fault test failed: seed %d; logs kept in %s (replay: %s=%d)", cfg.seed, cfg.logDir, faultSeedEnv, cfg.seed)
			return
		}
		if os.Getenv(faultLogsEnv) == "" {
			_ = os.RemoveAll(cfg.logDir)
		}
	})
	r.setup()

	ctx, stopLoad := context.WithCancel(context.Background())
	var load sync.WaitGroup
	r.startLoad(ctx, &load)
	r.hist.Begin = time.Now()

	r.schedule(cfg.duration)
	r.hist.LastFault = time.Now()
	r.awaitRecovery()
	// A quiet stretch under load: nothing may fail in it.
	time.Sleep(faultQuiet)
	stopLoad()
	load.Wait()
	r.finish()
}

// setup starts Vault, the providers and the replicas, and installs one
// credential per provider.
func (r *faultRun) setup() {
	t := r.t
	r.vault = vaulttest.StartPersistent(t)
	for _, p := range []*faultProvider{
		{name: "fosite", cred: "hydra"},
		{name: "simulator", cred: "acme"},
		{name: "simulator-grace", cred: "acme-grace", grace: true},
	} {
		p.logs = &syncbuf.Buffer{}
		logger := slog.New(slog.NewJSONHandler(p.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		if p.name == "fosite" {
			fos, err := fositeserver.Start(fositeserver.Config{AccessTokenLifespan: faultTokenLife, Logger: logger})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = fos.Close() })
			fos.AddClient(fositeClientID, fositeClientSecret, []string{callbackURI})
			p.fos = fos
		} else {
			cfg := providersim.Config{SessionTimeout: faultTokenLife, Logger: logger}
			if p.grace {
				cfg.ReuseGrace = faultGrace
			}
			sim, err := providersim.Start(cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = sim.Close() })
			sim.AddClient(providersim.Client{ID: simClientID, Secret: simClientSecret, RedirectURIs: []string{callbackURI}})
			p.sim = sim
		}
		var upstream string
		if p.fos != nil {
			upstream = p.fos.URL()
		} else {
			upstream = p.sim.URL()
		}
		proxy, err := startFaultProxy(upstream)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = proxy.Close() })
		p.proxy = proxy
		r.provs = append(r.provs, p)
		r.hist.Providers = append(r.hist.Providers, providerRecord{Name: p.name, Grace: p.grace, Creds: []string{p.cred}})
	}
	for i := range faultReplicas {
		rep := &faultReplica{idx: i, addr: freeLoopbackAddr(t), dataDir: filepath.Join(r.cfg.logDir, fmt.Sprintf("replica-%d", i))}
		if err := os.MkdirAll(rep.dataDir, 0o700); err != nil {
			t.Fatal(err)
		}
		rep.env = []string{"VAULT_ADDR=" + r.vault.Addr, "VAULT_TOKEN=" + r.vault.Token}
		rep.args = []string{"--addr", rep.addr, "--data-dir", rep.dataDir, "--store", "vault", "--vault-prefix", "rotavault/faults",
			"--refresh-claim-ttl", faultClaimTTL.String(), "--refresh-claim-margin", faultClaimMargin.String()}
		rep.start(t)
		// Reconnect within a second of a restart: gRPC's default backoff
		// (up to 2 minutes) would fail calls long after the replica is back,
		// which is the caller's setting, not the system under test.
		conn, err := grpc.NewClient(rep.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second}, MinConnectTimeout: time.Second}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		cl, err := client.New(conn, client.WithBackoff(50*time.Millisecond, time.Second))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Close() })
		rep.conn, rep.client = conn, cl
		rep.vault, rep.admin = rotavaultv1.NewTokenVaultServiceClient(conn), rotavaultv1.NewCredentialAdminServiceClient(conn)
		r.replicas = append(r.replicas, rep)
		r.hist.Recovery = append(r.hist.Recovery, recoveryRecord{Replica: i})
	}
	for _, p := range r.provs {
		if _, err := r.replicas[0].admin.CreateCredential(ctxT(t), &rotavaultv1.CreateCredentialRequest{CredentialId: p.cred, Spec: p.spec()}); err != nil {
			t.Fatalf("create %s: %v", p.cred, err)
		}
		if err := r.reimport(p); err != nil {
			t.Fatal(err)
		}
	}
}

// freeLoopbackAddr is a free loopback port, kept by a replica across its
// restarts so that its callers find it again.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// reimport starts a fresh family at p and imports it, through the first
// replica that takes it.
func (r *faultRun) reimport(p *faultProvider) error {
	ctx, cancel := context.WithTimeout(context.Background(), faultStepBound)
	defer cancel()
	rt, err := p.newRefreshToken(ctx)
	if err != nil {
		return fmt.Errorf("new family at %s: %w", p.name, err)
	}
	r.mu.Lock()
	p.imported = append(p.imported, rt)
	r.mu.Unlock()
	var last error
	for ctx.Err() == nil {
		for _, rep := range r.replicas {
			cctx, ccancel := context.WithTimeout(ctx, faultCallTimeout)
			_, err := rep.vault.Reauthenticate(cctx, &rotavaultv1.ReauthenticateRequest{CredentialId: p.cred,
				Flow: &rotavaultv1.ReauthenticateRequest_RefreshTokenImport{RefreshTokenImport: &rotavaultv1.RefreshTokenImport{RefreshToken: rt}}})
			ccancel()
			if err == nil {
				return nil
			}
			last = err
		}
	}
	return fmt.Errorf("import into %s: %w", p.cred, last)
}

// startLoad starts, per replica and credential, a caller through the Go
// client and a caller of bare GetAccessToken, each checking every token
// it gets at the provider, and one watcher; all stop when ctx ends.
func (r *faultRun) startLoad(ctx context.Context, wg *sync.WaitGroup) {
	for _, rep := range r.replicas {
		for _, p := range r.provs {
			wg.Add(2)
			go func() {
				defer wg.Done()
				r.caller(ctx, rep, p, "client", 200*time.Millisecond)
			}()
			go func() {
				defer wg.Done()
				r.caller(ctx, rep, p, "rpc", 500*time.Millisecond)
			}()
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = client.Watch(ctx, r.replicas[0].conn, client.WatchConfig{OnEvent: func(m *rotavaultv1.WatchRevocationsResponse) {
			n := m.GetNotice()
			if n == nil {
				return
			}
			rec := noticeRecord{At: time.Now(), Cred: n.GetCredentialId(), Family: n.GetFamilyId(),
				Kind:   strings.TrimPrefix(n.GetKind().String(), "NOTICE_KIND_"),
				Reason: strings.TrimPrefix(n.GetReason().String(), "REVOCATION_REASON_")}
			r.mu.Lock()
			defer r.mu.Unlock()
			r.hist.Notices = append(r.hist.Notices, rec)
			if rec.Reason == "LOST_ROTATION" {
				r.revoked[rec.Cred]++
			}
		}}, client.WithBackoff(50*time.Millisecond, time.Second))
	}()
}

// caller asks rep for p's token every interval (jittered) until ctx ends.
func (r *faultRun) caller(ctx context.Context, rep *faultReplica, p *faultProvider, source string, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		rec := callRecord{Source: source, Replica: rep.idx, Cred: p.cred, Begin: time.Now()}
		cctx, cancel := context.WithTimeout(ctx, faultCallTimeout)
		var access string
		if source == "client" {
			tok, err := rep.client.Token(cctx, p.cred)
			rec.End = time.Now()
			access, rec.Fingerprint, rec.Generation = tok.AccessToken, tok.Fingerprint, tok.Generation
			describeFailure(&rec, err)
		} else {
			resp, err := rep.vault.GetAccessToken(cctx, &rotavaultv1.GetAccessTokenRequest{CredentialId: p.cred})
			rec.End = time.Now()
			access, rec.Fingerprint, rec.Generation = resp.GetAccessToken(), resp.GetFingerprint(), resp.GetGeneration()
			describeFailure(&rec, err)
		}
		cancel()
		if ctx.Err() != nil && rec.Code != codes.OK {
			return // the run ended during the call: not a failure of the system
		}
		if rec.Code == codes.OK {
			cctx, cancel := context.WithTimeout(context.Background(), faultCallTimeout)
			valid, err := p.valid(cctx, access)
			cancel()
			rec.CheckedAt, rec.Checked, rec.Valid = time.Now(), err == nil, valid
			r.mu.Lock()
			r.handed[access] = true
			r.mu.Unlock()
		}
		r.record(func(h *faultHistory) { h.Calls = append(h.Calls, rec) })
	}
}

// describeFailure fills rec with err's code, reason and retry advice.
func describeFailure(rec *callRecord, err error) {
	if err == nil {
		return
	}
	st, _ := status.FromError(err)
	rec.Code, rec.Message = st.Code(), st.Message()
	if errors.Is(err, context.DeadlineExceeded) {
		rec.Code = codes.DeadlineExceeded
	}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			rec.Reason = d.GetReason()
		case *errdetails.RetryInfo:
			rec.RetryInfo = true
		}
	}
	if rec.Code == codes.OK { // not a status at all
		rec.Code = codes.Unknown
	}
}

// faultKinds are the faults the schedule draws from, with their weights.
var faultKinds = []struct {
	name   string
	weight int
}{
	{"replica-kill", 3}, {"replica-stop", 3}, {"vault-kill", 2},
	{"provider-latency", 2}, {"provider-5xx", 2}, {"lost-answer", 2},
}

// schedule injects faults one after another for d, with quiet gaps, each
// drawn from the seeded generator.
func (r *faultRun) schedule(d time.Duration) {
	total := 0
	for _, k := range faultKinds {
		total += k.weight
	}
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		time.Sleep(r.between(time.Second, 3*time.Second))
		pick := r.rng.IntN(total)
		kind := faultKinds[0].name
		for _, k := range faultKinds {
			if pick < k.weight {
				kind = k.name
				break
			}
			pick -= k.weight
		}
		f := r.inject(kind)
		r.t.Logf("fault %s %s: %s", kind, f.Detail, f.End.Sub(f.Begin).Round(time.Millisecond))
		r.record(func(h *faultHistory) { h.Faults = append(h.Faults, f) })
	}
}

func (r *faultRun) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(r.rng.Int64N(int64(hi-lo)+1))
}

// inject runs one fault to its end and returns its record.
func (r *faultRun) inject(kind string) faultRecord {
	t := r.t
	f := faultRecord{Kind: kind, Target: faultTarget{Replica: -1}, Begin: time.Now()}
	var ports map[int]bool // a killed or paused replica's, just before
	switch kind {
	case "replica-kill":
		rep := r.replicas[r.rng.IntN(len(r.replicas))]
		down := r.between(500*time.Millisecond, 3*time.Second)
		f.Target.Replica, f.Detail = rep.idx, fmt.Sprintf("replica %d down %s", rep.idx, down)
		ports = r.portsOf(rep)
		rep.current().kill()
		time.Sleep(down)
		rep.start(t)
	case "replica-stop":
		rep := r.replicas[r.rng.IntN(len(r.replicas))]
		pause := faultClaimTTL + r.between(time.Second, 3*time.Second)
		f.Target.Replica, f.Detail = rep.idx, fmt.Sprintf("replica %d stopped %s (beyond its claim)", rep.idx, pause)
		p := rep.current()
		ports = r.portsOf(rep)
		_ = p.cmd.Process.Signal(syscall.SIGSTOP)
		// And once stopped: a connection the replica opened between the
		// first look and the signal (a refresh sent just then, its answer
		// arriving while it is stopped) has a port only this one sees.
		stopped := make(map[int]bool)
		maps.Copy(stopped, ports)
		maps.Copy(stopped, r.portsOf(rep))
		ports = stopped
		time.Sleep(pause)
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
	case "vault-kill":
		most := 2 * time.Second // with the restart, within the claim
		if r.cfg.beyondClaim {
			most = faultClaimTTL
		}
		down := r.between(500*time.Millisecond, most)
		f.Target.Vault, f.Detail = true, fmt.Sprintf("Vault down %s, restarted and unsealed", down)
		r.vault.Stop()
		time.Sleep(down)
		r.vault.Restart()
	case "provider-latency":
		p := r.provs[r.rng.IntN(len(r.provs))]
		most := faultClaimTTL - faultClaimMargin - time.Second // within the claim budget
		if r.cfg.beyondClaim {
			most = faultClaimTTL
		}
		lat, hold := r.between(500*time.Millisecond, most), r.between(3*time.Second, 8*time.Second)
		f.Target.Provider, f.Detail = p.name, fmt.Sprintf("%s answers after %s for %s", p.name, lat, hold)
		p.setLatency(lat)
		time.Sleep(hold)
		p.setLatency(0)
	case "provider-5xx":
		p := r.provs[r.rng.IntN(len(r.provs))]
		n := 1 + r.rng.IntN(5)
		f.Target.Provider, f.Detail = p.name, fmt.Sprintf("%s answers 503 to the next %d token requests", p.name, n)
		p.fail(n)
		r.awaitStep(f.Detail, func() bool { return p.failuresLeft() == 0 })
	case "lost-answer":
		p := r.provs[r.rng.IntN(len(r.provs))]
		f.Target.Provider, f.Lost, f.LostCred = p.name, true, p.cred
		f.Detail = fmt.Sprintf("%s loses the answer to the next rotation of %s (grace %v)", p.name, p.cred, p.grace)
		lostBefore := p.lostAnswers()
		r.mu.Lock()
		revokedBefore := r.revoked[p.cred]
		r.mu.Unlock()
		p.loseNext()
		if !r.awaitStep(f.Detail, func() bool { return p.lostAnswers() > lostBefore }) {
			break
		}
		if p.grace {
			break
		}
		r.familyLost(p, revokedBefore)
	}
	f.End = time.Now()
	if kind != "lost-answer" {
		r.accountForUnstoredRotations(f, ports)
	}
	return f
}

// familyLost waits for the LOST_ROTATION notice of p's family and imports
// a new one, as an operator would: without grace a lost answer costs the
// family.
func (r *faultRun) familyLost(p *faultProvider, revokedBefore int) {
	r.awaitStep("LOST_ROTATION notice for "+p.cred, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.revoked[p.cred] > revokedBefore
	})
	if err := r.reimport(p); err != nil {
		r.record(func(h *faultHistory) {
			h.Incomplete = append(h.Incomplete, "re-import after a lost answer: "+err.Error())
		})
	}
}

// lostNoticesBefore counts the LOST_ROTATION notices of cred received
// before t.
func (r *faultRun) lostNoticesBefore(cred string, t time.Time) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range r.hist.Notices {
		if rec.Cred == cred && rec.Reason == "LOST_ROTATION" && rec.At.Before(t) {
			n++
		}
	}
	return n
}

// portsOf is the replica's open TCP ports, taken just before a fault stops
// it; an error leaves the history incomplete.
func (r *faultRun) portsOf(rep *faultReplica) map[int]bool {
	ports, err := tcpPortsOf(rep.current().cmd.Process.Pid)
	if err != nil {
		r.record(func(h *faultHistory) {
			h.Incomplete = append(h.Incomplete, fmt.Sprintf("ports of replica %d: %v", rep.idx, err))
		})
	}
	return ports
}

// accountForUnstoredRotations finds the rotations a provider committed to
// while the replica of fault f (owning ports just before it) was killed or
// paused: answers on their way to it from a second before the fault to its
// end, and answers whose caller was gone. Such a rotation may never be
// stored — the replica is dead, or it resumes after another one took its
// claim over and presented the old refresh token — which at a provider
// without grace loses the family: no broker can avoid it, and the run must
// count it as a lost answer rather than as a reuse Rotavault caused.
// Whether it was lost shows at the provider: a reuse no lost answer
// explains (the old token was presented: the family is gone, announced,
// and imported again) or a later rotation (the new token was stored).
func (r *faultRun) accountForUnstoredRotations(f faultRecord, ports map[int]bool) {
	for _, p := range r.provs {
		var suspect *refreshAnswer
		for _, a := range p.proxy.Answers(p.resolved) {
			p.resolved = a.Seq
			// On its way from the provider's answer to its delivery (held
			// by injected latency meanwhile) at any time from a second
			// before the fault to its end.
			inWindow := ports[a.Port] && !a.Delivered.Before(f.Begin.Add(-time.Second)) && !a.At.After(f.End)
			if a.Rotated && !a.Dropped && (inWindow || a.CallerGone) {
				suspect = &a
			}
		}
		if suspect == nil || p.grace {
			continue // within grace the old token still works: nothing lost
		}
		revokedBefore := r.lostNoticesBefore(p.cred, suspect.At)
		// Lost: the provider saw a reuse no lost answer explains. Stored: a
		// later refresh rotated. An invalid_grant that is not a reuse (a
		// token of an earlier, revoked family) decides nothing.
		var lostIt bool
		r.awaitStep(fmt.Sprintf("a refresh of %s after an answer replica %d may not have stored", p.cred, f.Target.Replica), func() bool {
			if p.reuses() > p.lostAnswers() {
				lostIt = true
				return true
			}
			for _, a := range p.proxy.Answers(suspect.Seq) {
				if a.Rotated {
					p.resolved = max(p.resolved, a.Seq)
					return true
				}
			}
			return false
		})
		if !lostIt {
			continue // stored after all: the family lives on
		}
		p.lostInFaults++
		lost := faultRecord{Kind: "unstored-rotation", Target: faultTarget{Replica: -1, Provider: p.name}, Begin: suspect.At,
			Detail: fmt.Sprintf("%s rotated %s for replica %d, which never stored it (grace false)", p.name, p.cred, f.Target.Replica),
			Lost:   true, LostCred: p.cred}
		r.familyLost(p, revokedBefore)
		lost.End = time.Now()
		r.t.Logf("fault %s %s: %s", lost.Kind, lost.Detail, lost.End.Sub(lost.Begin).Round(time.Millisecond))
		r.record(func(h *faultHistory) { h.Faults = append(h.Faults, lost) })
	}
}

// awaitStep polls cond until it holds or faultStepBound passes; a step that
// never completes is recorded as an incomplete history.
func (r *faultRun) awaitStep(what string, cond func() bool) bool {
	deadline := time.Now().Add(faultStepBound)
	for !cond() {
		if time.Now().After(deadline) {
			r.record(func(h *faultHistory) {
				h.Incomplete = append(h.Incomplete, fmt.Sprintf("%s: not within %s", what, faultStepBound))
			})
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// awaitRecovery records when each replica serves every credential again
// after the last fault, waiting at most twice the bound.
func (r *faultRun) awaitRecovery() {
	deadline := time.Now().Add(2 * faultRecoveryBound)
	for i, rep := range r.replicas {
		for time.Now().Before(deadline) {
			ok := true
			for _, p := range r.provs {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_, err := rep.vault.GetAccessToken(ctx, &rotavaultv1.GetAccessTokenRequest{CredentialId: p.cred})
				cancel()
				if err != nil {
					ok = false
					break
				}
			}
			if ok {
				r.hist.Recovery[i].Served = time.Now()
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// finish stops everything, gathers the providers' counts and the logs,
// checks the history and reports.
func (r *faultRun) finish() {
	for _, rep := range r.replicas {
		_ = rep.client.Close()
		rep.current().kill()
	}
	for i, p := range r.provs {
		r.hist.Providers[i].Reuses = p.reuses()
		r.hist.Providers[i].LostAnswers = p.lostAnswers()
		r.hist.Providers[i].Rotations = p.rotations()
	}
	r.hist.Leaks = findLeaks(r.secrets(), r.logTexts())
	if raw, err := json.MarshalIndent(&r.hist, "", " "); err == nil {
		_ = os.WriteFile(filepath.Join(r.cfg.logDir, "history.json"), raw, 0o600)
	}
	vs := checkFaultHistory(&r.hist)
	r.report(vs)
}

// secrets lists every secret of the run: client secrets, every refresh and
// access token any provider issued or Rotavault handed out, Vault's tokens.
func (r *faultRun) secrets() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := []string{simClientSecret, fositeClientSecret, r.vault.RootToken, r.vault.Token, r.vault.TransitToken}
	for _, p := range r.provs {
		out = append(out, p.imported...)
		out = append(out, p.proxy.Secrets()...)
		if p.sim != nil {
			out = append(out, p.sim.Secrets()...)
		}
	}
	for tok := range r.handed {
		out = append(out, tok)
	}
	return out
}

// logTexts writes every process's log into the run's directory and returns
// every file there (the replicas' audit trails included) by name.
func (r *faultRun) logTexts() map[string]string {
	t := r.t
	for _, rep := range r.replicas {
		for j, p := range rep.procs {
			name := filepath.Join(r.cfg.logDir, fmt.Sprintf("replica-%d.run-%d.log", rep.idx, j))
			if err := os.WriteFile(name, []byte(p.logs.String()), 0o600); err != nil {
				t.Error(err)
			}
		}
	}
	for _, p := range r.provs {
		if err := os.WriteFile(filepath.Join(r.cfg.logDir, p.name+".log"), []byte(p.logs.String()), 0o600); err != nil {
			t.Error(err)
		}
	}
	texts := make(map[string]string)
	_ = filepath.WalkDir(r.cfg.logDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		raw, err := os.ReadFile(path)
		if err == nil {
			texts[strings.TrimPrefix(path, r.cfg.logDir+"/")] = string(raw)
		}
		return nil
	})
	return texts
}

// report prints the run's figures and every violation, and fails the test
// on those not pending a fix (all of them with ROTAVAULT_FAULT_STRICT=1).
func (r *faultRun) report(vs []violation) {
	t := r.t
	calls, failures, handed := len(r.hist.Calls), 0, 0
	for _, c := range r.hist.Calls {
		if c.Code != codes.OK {
			failures++
		} else {
			handed++
		}
	}
	var recovered time.Duration
	for _, rec := range r.hist.Recovery {
		if !rec.Served.IsZero() {
			recovered = max(recovered, rec.Served.Sub(r.hist.LastFault))
		}
	}
	t.Logf("fault test: seed %d, %d faults, %d calls (%d tokens handed out, %d failures), %d notices, every replica serving %s after the last fault",
		r.cfg.seed, len(r.hist.Faults), calls, handed, failures, len(r.hist.Notices), recovered.Round(time.Millisecond))
	for _, p := range r.hist.Providers {
		t.Logf("provider %s: %d rotations, %d answers lost, %d reuses", p.Name, p.Rotations, p.LostAnswers, p.Reuses)
	}
	var lines []string
	for _, v := range vs {
		lines = append(lines, v.String())
	}
	_ = os.WriteFile(filepath.Join(r.cfg.logDir, "violations.txt"), []byte(strings.Join(lines, "\n")+"\n"), 0o600)
	// Grouped by invariant and by the fix they wait for, in order of
	// first occurrence.
	type group struct {
		inv, pending string
	}
	var order []group
	byGroup := make(map[group][]violation)
	for _, v := range vs {
		g := group{v.Invariant, pendingOf(v)}
		if byGroup[g] == nil {
			order = append(order, g)
		}
		byGroup[g] = append(byGroup[g], v)
	}
	const shown = 20
	for _, g := range order {
		logf, note := t.Errorf, ""
		if g.pending != "" {
			note = " (pending " + g.pending + ")"
			if !r.cfg.strict {
				logf = t.Logf
			}
		}
		group := byGroup[g]
		logf("invariant %s violated %d times%s; the first %d:", g.inv, len(group), note, min(len(group), shown))
		for _, v := range group[:min(len(group), shown)] {
			logf("  %s", v)
		}
	}
	if len(vs) > 0 {
		t.Logf("seed %d; every violation in %s", r.cfg.seed, filepath.Join(r.cfg.logDir, "violations.txt"))
	}
}
