package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/rotavault/rotavault/broker/option"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/providersim"
)

// rotateContinuously rotates acme's family until ctx ends: each round the
// access token is revoked at the provider and reported rejected, which
// makes the server refresh (a new generation, persisted first). rounds
// hears of a rotation when it is listening, and is closed at the end.
func rotateContinuously(ctx context.Context, addr string, sim *providersim.Server, rounds chan<- uint64) error {
	defer close(rounds)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	vault := rotavaultv1.NewTokenVaultServiceClient(conn)
	for ctx.Err() == nil {
		tok, err := vault.GetAccessToken(ctx, &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
		if err != nil {
			return errors.Join(ctx.Err(), err)
		}
		resp, err := http.PostForm(sim.URL()+"/services/oauth2/revoke", url.Values{"token": {tok.GetAccessToken()}})
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		next, err := vault.GetAccessToken(ctx, &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme",
			RejectedToken: &rotavaultv1.RejectedToken{Token: &rotavaultv1.RejectedToken_Generation{Generation: tok.GetGeneration()}}})
		if err != nil {
			return errors.Join(ctx.Err(), err)
		}
		select {
		case rounds <- next.GetGeneration():
		default:
		}
	}
	return nil
}

func showGeneration(t *testing.T, c *cli) (generation uint64, status string) {
	t.Helper()
	r := c.run("", "credentials", "show", "acme", "--json").expect(t, exitOK)
	var shown struct {
		Generation string `json:"generation"`
		Status     string `json:"status"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &shown); err != nil {
		t.Fatalf("credentials show --json: %v\n%s", err, r.stdout)
	}
	g, err := strconv.ParseUint(shown.Generation, 10, 64)
	if err != nil {
		t.Fatalf("generation %q: %v", shown.Generation, err)
	}
	return g, shown.Status
}

func TestOnlineBackupDuringRotationsRestores(t *testing.T) {
	sim := startSim(t)
	dir := t.TempDir()
	keyFile, _ := newKeyFile(t, t.TempDir(), "store.key")
	c := newCLI(t, nil)
	// Rejected-token reports may refresh back to back: rotations as fast
	// as the provider answers.
	node := startNode(t, dir, keyFile, c.trans, func(cfg *serverConfig) {
		cfg.BrokerOptions = append(cfg.BrokerOptions, option.WithRejectionInterval(0))
	})
	c.env = map[string]string{"ROTAVAULT_ADDR": node.addr}
	t.Cleanup(func() { c.trans.assertNoSecrets(t, append(sim.Secrets(), simClientSecret)...) })
	c.run(simClientSecret+"\n", "credentials", "put", "acme", "--provider", "salesforce", "--base-url", sim.URL(),
		"--client-id", simClientID, "--client-secret-file", "-", "--scope", "api refresh_token").expect(t, exitOK)
	rt, err := sim.IssueRefreshToken(simClientID, []string{"api", "refresh_token"})
	if err != nil {
		t.Fatal(err)
	}
	c.run(rt+"\n", "reauth", "import", "acme", "--refresh-token-file", "-").expect(t, exitOK)

	ctx, stopRotating := context.WithCancel(context.Background())
	rounds := make(chan uint64)
	var wg sync.WaitGroup
	var rotateErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		rotateErr = rotateContinuously(ctx, node.addr, sim, rounds)
	}()
	stop := func() {
		stopRotating()
		wg.Wait()
		if rotateErr != nil && !errors.Is(rotateErr, context.Canceled) {
			t.Errorf("rotations: %v", rotateErr)
		}
	}
	defer stop()
	rotated := func() {
		t.Helper()
		if _, ok := <-rounds; !ok {
			t.Fatalf("rotations stopped: %v", rotateErr)
		}
	}
	rotated()
	rotated() // rotations are going on
	before, _ := showGeneration(t, c)

	out := filepath.Join(t.TempDir(), "rotavault-backup.db")
	r := c.run("", "store", "backup", "--online", "--out", out).expect(t, exitOK)
	if !strings.Contains(r.stdout, "backup of the running server written to "+out) {
		t.Fatalf("backup: %s", r.stdout)
	}
	rotated() // still rotating after the backup
	after, _ := showGeneration(t, c)
	stop()
	if mode := fileMode(t, out); mode != 0o600 {
		t.Errorf("backup mode %o, want 0600", mode)
	}
	entries, err := os.ReadDir(filepath.Dir(out))
	if err != nil || len(entries) != 1 {
		t.Errorf("the backup's directory holds %v (%v), want the backup alone: no partial file left", entries, err)
	}
	if r := c.run("", "store", "backup", "--online", "--out", out).expect(t, exitUsage); !strings.Contains(r.stderr, "exists") {
		t.Errorf("backup over an existing file: %s", r.stderr)
	}

	// Restore as the backup's help says: the copy in place of the store,
	// the trail (copied after the backup) beside it, the same key.
	restored := t.TempDir()
	trail, err := os.ReadFile(filepath.Join(dir, auditFileName))
	if err != nil {
		t.Fatal(err)
	}
	copyFile(t, out, filepath.Join(restored, storeFileName))
	if err := os.WriteFile(filepath.Join(restored, auditFileName), trail, 0o600); err != nil {
		t.Fatal(err)
	}
	c.run("", "audit", "verify", "--data-dir", restored, "--store-key-file", keyFile).expect(t, exitOK)
	node.stop(t)
	restoredNode := startNode(t, restored, keyFile, c.trans)
	c.env = map[string]string{"ROTAVAULT_ADDR": restoredNode.addr}
	got, status := showGeneration(t, c)
	if status != "CREDENTIAL_STATUS_ACTIVE" || got < before || got > after {
		t.Fatalf("restored backup holds generation %d (%s), want an active family between %d and %d", got, status, before, after)
	}
}

func TestOnlineAuditVerify(t *testing.T) {
	dir := t.TempDir()
	keyFile, _ := newKeyFile(t, t.TempDir(), "store.key")
	witness := filepath.Join(t.TempDir(), "witness.log")
	c := newCLI(t, nil)
	node := startNode(t, dir, keyFile, c.trans, func(cfg *serverConfig) { cfg.AuditWitness = witness })
	c.env = map[string]string{"ROTAVAULT_ADDR": node.addr}
	for _, id := range []string{"a", "b", "c"} {
		c.run("", "credentials", "put", id, "--provider", "oauth2", "--token-url", "https://idp.example.com/token", "--client-id", "x").expect(t, exitOK)
	}
	verify := func(code int) result { return c.run("", "audit", "verify", "--online").expect(t, code) }
	r := verify(exitOK)
	if !strings.Contains(r.stdout, "OK: the server's audit trail: 3 records, chain intact") || !strings.Contains(r.stdout, "not older than its witness") {
		t.Fatalf("online verify: %s", r.stdout)
	}
	if r := c.run("", "audit", "verify", "--online", "--json").expect(t, exitOK); !strings.Contains(r.stdout, `"intact":true`) {
		t.Fatalf("online verify --json: %s", r.stdout)
	}

	path := filepath.Join(dir, auditFileName)
	clean, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	edited := bytes.Replace(clean, []byte(`"credential":"b"`), []byte(`"credential":"x"`), 1)
	if bytes.Equal(edited, clean) {
		t.Fatalf("no record of b to edit:\n%s", clean)
	}
	if err := os.WriteFile(path, edited, 0o600); err != nil {
		t.Fatal(err)
	}
	r = verify(exitError)
	if !strings.Contains(r.stderr, "line 2 (seq 2): bad mac") {
		t.Fatalf("online verify of an edited trail: %s", r.stderr)
	}
	if err := os.WriteFile(path, clean, 0o600); err != nil {
		t.Fatal(err)
	}
	verify(exitOK)
	// A witness file rotated away: no lines to check yet, said so.
	if err := os.Rename(witness, witness+".1"); err != nil {
		t.Fatal(err)
	}
	if r := verify(exitOK); !strings.Contains(r.stdout, "the witness holds no line of this store") {
		t.Errorf("online verify with the witness rotated away: %s", r.stdout)
	}
	if r := c.run("", "audit", "verify", "--online", "--witness", witness).expect(t, exitUsage); !strings.Contains(r.stderr, "offline") {
		t.Errorf("--witness with --online: %s", r.stderr)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
