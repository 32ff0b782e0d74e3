package integration

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/rotavault/rotavault/providersim"
)

// cliTimeout is the CLI's default --timeout: a call that takes longer
// fails there with DEADLINE_EXCEEDED.
const cliTimeout = 10 * time.Second

// With a 20 s reuse grace period (the provider's and the credential's) and
// the default claim timing, a replica SIGKILLed while the provider's
// rotating answer was in flight lost the family: the other replica took
// over only after the 45 s claim, when the grace period had ended. The
// claim now fits inside the grace period, and the takeover's retry is
// accepted.
func TestReplicaKilledInsideATwentySecondGrace(t *testing.T) {
	k := setupKillClaim(t, 20*time.Second, "--refresh-claim-ttl", "45s", "--refresh-claim-margin", "15s") // the defaults
	before := k.killAfterTheProviderRotated(t)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // past the default claim, to see the old failure
	defer cancel()
	tok, err := k.forceRefresh(ctx, k.b) // waits out A's claim, then takes over
	s := k.sim.Stats()
	t.Logf("takeover: %v; provider saw %d refresh requests, %d grace reuses, %d families revoked", err, s.RefreshRequests-before.RefreshRequests, s.GraceReuses, s.FamiliesRevoked)
	if err != nil || tok.GetFamilyId() != k.cur.GetFamilyId() || s.GraceReuses != 1 || s.FamiliesRevoked != 0 || !k.sim.AccessTokenActive(tok.GetAccessToken()) {
		t.Fatalf("the family did not survive a crash inside its 20 s grace period: %v, %+v", err, s)
	}
}

// On the embedded store a server SIGKILLed during a refresh left its claim
// for 45 s: after a restart every caller waited it out, and the CLI's
// 10 s default timeout reported DEADLINE_EXCEEDED. The file lock proves the
// previous process dead, so the restarted server takes the claim over at
// once.
func TestEmbeddedStoreServesAtOnceAfterAKillDuringARefresh(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "store.key")
	if out, err := exec.Command(rotavaultBinary(t), "store", "generate-key", "--out", keyFile).CombinedOutput(); err != nil {
		t.Fatalf("generate-key: %v\n%s", err, out)
	}
	sim, err := providersim.Start(providersim.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	sim.AddClient(providersim.Client{ID: simClientID, Secret: simClientSecret})
	args := []string{"--addr", "127.0.0.1:0", "--data-dir", filepath.Join(dir, "data"), "--store-key-file", keyFile}
	start := func() *replicaProcess {
		p, addr := startServeProcess(t, nil, args...)
		p.connect(t, addr)
		return p
	}
	k := &killSetup{sim: sim, a: start()}
	k.install(t, 0)
	k.revokeCurrentAccessToken(t)
	before := k.sim.Stats()
	sim.SetLatency(time.Minute) // the refresh waits at the provider, unprocessed
	go func() { _, _ = k.forceRefresh(context.Background(), k.a) }()
	if err := sim.WaitForTokenRequests(ctxT(t), before.TokenRequests+1); err != nil {
		t.Fatal(err)
	}
	k.a.kill()
	sim.SetLatency(0)

	restarted := start()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	tok, err := k.forceRefresh(ctx, restarted) // needs a refresh: the claim is in the way
	if err != nil || !sim.AccessTokenActive(tok.GetAccessToken()) {
		t.Fatalf("after the restart, within the CLI's default timeout: %v", err)
	}
	if s := sim.Stats(); s.ReuseDetections != 0 || s.Rotations != before.Rotations+1 {
		t.Fatalf("rotation did not continue cleanly: %+v", s)
	}
}
