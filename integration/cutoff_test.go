package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/rotavault/rotavault/client"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/fositeserver"
	"github.com/rotavault/rotavault/internal/vaulttest"
)

// The serving cutoff end to end: replica processes on one Vault, ory/fosite
// (which kills the previous access token at every rotation) as the
// provider, load through the Go client, and every token handed out
// presented to fosite's introspection endpoint at once. A token fosite
// calls inactive is one the provider refused.

const (
	cutoffTokenLife = 20 * time.Second
	// Replicas' claims are short so a SIGSTOP beyond one stays short.
	cutoffClaimTTL    = "5s"
	cutoffClaimMargin = "2s"
	cutoffReplicas    = 3
	cutoffCredential  = "hydra"
	// cutoffCallEvery paces each load worker: 3 workers, about 30 calls/s.
	cutoffCallEvery = 100 * time.Millisecond
)

// cutoffLoad is how long each test drives load: 25 s, or
// ROTAVAULT_CUTOFF_LOAD (a Go duration, e.g. 90s) for the long run.
func cutoffLoad(t *testing.T) time.Duration {
	t.Helper()
	raw := os.Getenv("ROTAVAULT_CUTOFF_LOAD")
	if raw == "" {
		return 25 * time.Second
	}
	d, err := time.ParseDuration(raw)
	if err != nil || d <= 0 {
		t.Fatalf("ROTAVAULT_CUTOFF_LOAD=%q: want a positive duration", raw)
	}
	return d
}

type cutoffRig struct {
	fs       *fositeserver.Server
	replicas []*replicaProcess
	conns    []*grpc.ClientConn
	// clients are one long-lived Go client per replica, as a consumer
	// keeps one: its cache must honour the server's use_until.
	clients []*client.Client
	// clientPerCall makes every call through a new Go client: what the
	// replicas hand out, with no client cache in front.
	clientPerCall bool
}

func setupCutoffRig(t *testing.T) *cutoffRig {
	t.Helper()
	fs, err := fositeserver.Start(fositeserver.Config{AccessTokenLifespan: cutoffTokenLife})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fs.Close() })
	fs.AddClient(fositeClientID, fositeClientSecret, []string{callbackURI})
	v := vaulttest.StartDev(t)
	r := &cutoffRig{fs: fs}
	for range cutoffReplicas {
		p, addr := startServeProcess(t, []string{"VAULT_ADDR=" + v.Addr, "VAULT_TOKEN=" + v.Token},
			"--addr", "127.0.0.1:0", "--data-dir", t.TempDir(), "--store", "vault", "--vault-prefix", "rotavault/cutoff",
			"--refresh-claim-ttl", cutoffClaimTTL, "--refresh-claim-margin", cutoffClaimMargin)
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		p.vault, p.admin = rotavaultv1.NewTokenVaultServiceClient(conn), rotavaultv1.NewCredentialAdminServiceClient(conn)
		c, err := client.New(conn, client.WithoutRevocationWatch())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		r.replicas, r.conns, r.clients = append(r.replicas, p), append(r.conns, conn), append(r.clients, c)
	}
	spec := &rotavaultv1.CredentialSpec{
		ProviderKind: rotavaultv1.ProviderKind_PROVIDER_KIND_OAUTH2, TokenUrl: fs.TokenURL(), RevocationUrl: fs.RevocationURL(),
		ClientId: fositeClientID, ClientSecret: fositeClientSecret, Scopes: []string{"offline", "api"},
	}
	if _, err := r.replicas[0].admin.CreateCredential(ctxT(t), &rotavaultv1.CreateCredentialRequest{CredentialId: cutoffCredential, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	rt, err := fs.IssueRefreshToken(ctxT(t), fositeClientID, fositeClientSecret, callbackURI, []string{"offline", "api"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.replicas[0].vault.Reauthenticate(ctxT(t), &rotavaultv1.ReauthenticateRequest{CredentialId: cutoffCredential,
		Flow: &rotavaultv1.ReauthenticateRequest_RefreshTokenImport{RefreshTokenImport: &rotavaultv1.RefreshTokenImport{RefreshToken: rt}}}); err != nil {
		t.Fatal(err)
	}
	return r
}

// active asks fosite's introspection endpoint whether token is alive.
func (r *cutoffRig) active(ctx context.Context, token string) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.fs.IntrospectionURL(), strings.NewReader(url.Values{"token": {token}}.Encode()))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(fositeClientID, fositeClientSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var body struct {
		Active bool `json:"active"`
	}
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("introspection: HTTP %d", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return false, err
	}
	return body.Active, nil
}

// handout is one token a replica handed out and what fosite said of it.
type handout struct {
	replica    int
	at         time.Time
	generation uint64
	refused    bool
}

type cutoffResult struct {
	mu       sync.Mutex
	handouts []handout
	failures map[string]int
}

func (res *cutoffResult) refused() []handout {
	res.mu.Lock()
	defer res.mu.Unlock()
	var out []handout
	for _, h := range res.handouts {
		if h.refused {
			out = append(out, h)
		}
	}
	return out
}

func (res *cutoffResult) summary() string {
	res.mu.Lock()
	defer res.mu.Unlock()
	refused, maxGen := 0, uint64(0)
	for _, h := range res.handouts {
		if h.refused {
			refused++
		}
		maxGen = max(maxGen, h.generation)
	}
	return fmt.Sprintf("%d tokens handed out, %d refused by the provider, generations up to %d, failures %v", len(res.handouts), refused, maxGen, res.failures)
}

// load drives one worker per replica for d, each through its replica's
// long-lived Go client (its cache in front of the server's, as a
// consumer's would be). Every token is introspected at once.
func (r *cutoffRig) load(t *testing.T, d time.Duration) *cutoffResult {
	t.Helper()
	res := &cutoffResult{failures: map[string]int{}}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var wg sync.WaitGroup
	for i := range r.conns {
		wg.Go(func() {
			tick := time.NewTicker(cutoffCallEvery)
			defer tick.Stop()
			for ctx.Err() == nil {
				h, err := r.call(i)
				res.mu.Lock()
				if err != nil {
					res.failures[status.Code(err).String()]++
				} else {
					res.handouts = append(res.handouts, h)
				}
				res.mu.Unlock()
				select {
				case <-ctx.Done():
				case <-tick.C:
				}
			}
		})
	}
	wg.Wait()
	return res
}

// token asks replica i for a token through its Go client.
func (r *cutoffRig) token(ctx context.Context, i int, opts ...client.TokenOption) (client.Token, error) {
	if !r.clientPerCall {
		return r.clients[i].Token(ctx, cutoffCredential, opts...)
	}
	c, err := client.New(r.conns[i], client.WithoutRevocationWatch())
	if err != nil {
		return client.Token{}, err
	}
	defer c.Close()
	return c.Token(ctx, cutoffCredential, opts...)
}

// call asks replica i for a token and presents it to the provider.
func (r *cutoffRig) call(i int) (handout, error) {
	// Calls queued on a stopped replica wait for it, as a consumer's would.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tok, err := r.token(ctx, i)
	if err != nil {
		return handout{}, err
	}
	h := handout{replica: i, at: time.Now(), generation: tok.Generation}
	alive, err := r.active(ctx, tok.AccessToken)
	if err != nil {
		return handout{}, err
	}
	h.refused = !alive
	return h, nil
}

// Three replicas under steady load: every token handed out is alive at the
// provider. Without the cutoff, replicas that did not rotate kept handing
// out their cached token after another replica's rotation killed it.
func TestCutoffNoTokenRefusedAcrossReplicas(t *testing.T) {
	r := setupCutoffRig(t)
	res := r.load(t, cutoffLoad(t))
	t.Log(res.summary())
	if len(res.failures) != 0 {
		t.Errorf("calls failed: %v", res.failures)
	}
	if refused := res.refused(); len(refused) != 0 {
		t.Fatalf("the provider refused %d handed-out tokens, want none; first: %+v", len(refused), refused[0])
	}
}

// A replica SIGSTOPped across a rotation and beyond its claim, then
// resumed, serves its queued callers the rotation's result, not the token
// it had cached.
func TestCutoffReplicaResumedFromSIGSTOPServesNoKilledToken(t *testing.T) {
	r := setupCutoffRig(t)
	d := cutoffLoad(t)
	stopped := r.replicas[cutoffReplicas-1]
	var resumed atomic.Bool
	go func() {
		// Stopped early (it holds no claim: replica 0 imported the token),
		// resumed after the first scheduled rotation (13 s) and more than its
		// claim later.
		time.Sleep(time.Second)
		_ = stopped.cmd.Process.Signal(syscall.SIGSTOP)
		time.Sleep(15 * time.Second)
		_ = stopped.cmd.Process.Signal(syscall.SIGCONT)
		resumed.Store(true)
	}()
	t.Cleanup(func() { _ = stopped.cmd.Process.Signal(syscall.SIGCONT) })
	res := r.load(t, max(d, 20*time.Second))
	t.Log(res.summary())
	if !resumed.Load() {
		t.Fatal("the load ended before the replica was resumed")
	}
	if len(res.failures) != 0 {
		t.Errorf("calls failed: %v", res.failures)
	}
	if refused := res.refused(); len(refused) != 0 {
		t.Fatalf("the provider refused %d handed-out tokens, want none; first: %+v", len(refused), refused[0])
	}
}

// offScheduleWindow is the residual window after a rotation off the
// schedule: other replicas stop handing out the old token at their next
// notice poll (500 ms) after the rotation's notice is logged, plus a
// re-read of the family; the assertion allows three polls on a loaded
// machine.
const offScheduleWindow = 1500 * time.Millisecond

// Rotations off the schedule (a min_remaining beyond the fresh window,
// about every 10 s) reach the other replicas through the notice log: the
// provider refuses old tokens only within the window after each. This
// measures the replicas: a consumer's own cache keeps the old token until
// its use_until (off-schedule rotations are not streamed to consumers; a
// rejected-token report replaces it), so the calls use no client cache.
func TestCutoffOffScheduleRotationsRefuseOnlyWithinTheWindow(t *testing.T) {
	r := setupCutoffRig(t)
	r.clientPerCall = true
	d := cutoffLoad(t)
	type span struct{ from, to time.Time }
	var (
		mu       sync.Mutex
		triggers []span
	)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		cur, err := r.token(ctx, 0)
		for i := 1; err == nil; i++ {
			// 10.5 s into a 20 s token: past the 10 s rotation floor,
			// before the 12.5 s cutoff; asking for 14 s left rotates it.
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(cur.IssuedAt.Add(10500 * time.Millisecond))):
			}
			from := time.Now()
			var tok client.Token
			tok, err = r.token(ctx, i%cutoffReplicas, client.WithMinRemaining(14*time.Second))
			if err != nil {
				return // the load is over
			}
			if tok.Generation <= cur.Generation {
				t.Errorf("min_remaining 14s did not rotate generation %d", cur.Generation)
			}
			mu.Lock()
			triggers = append(triggers, span{from, time.Now()})
			mu.Unlock()
			cur = tok
		}
	}()
	res := r.load(t, d)
	<-done
	t.Log(res.summary())
	if len(res.failures) != 0 {
		t.Errorf("calls failed: %v", res.failures)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(triggers) == 0 {
		t.Fatal("no rotation off the schedule happened")
	}
	var worst time.Duration
	for _, h := range res.refused() {
		inside := false
		for _, s := range triggers {
			if !h.at.Before(s.from) && h.at.Before(s.to.Add(offScheduleWindow)) {
				inside, worst = true, max(worst, h.at.Sub(s.to))
			}
		}
		if !inside {
			t.Errorf("replica %d handed out generation %d refused by the provider outside the window of every off-schedule rotation", h.replica, h.generation)
		}
	}
	t.Logf("%d off-schedule rotations; %d tokens refused, the latest %s after its rotation's answer", len(triggers), len(res.refused()), worst)
}
