package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rotavault/rotavault/internal/vaulttest"
)

// TestServeOnVault runs the server with its records in a real Vault,
// configured as operators do: VAULT_ADDR and VAULT_TOKEN in the environment.
func TestServeOnVault(t *testing.T) {
	v := vaulttest.StartDev(t)
	t.Setenv("VAULT_ADDR", v.Addr)
	t.Setenv("VAULT_TOKEN", v.Token)
	dir := t.TempDir()
	c := newCLI(t, nil)
	serve := func() string {
		srv := c.start(nil, "serve", "--addr", "127.0.0.1:0", "--data-dir", dir, "--store", "vault", "--vault-prefix", "rotavault/cli-test")
		addr := servingAddr(t, srv.stderr.WaitFor(t, `"rotavault serving"`, awaitDeadline))
		t.Cleanup(func() { srv.stop(t) })
		c.env = map[string]string{"ROTAVAULT_ADDR": addr}
		return addr
	}
	serve()
	c.run("", "credentials", "put", "onvault", "--provider", "oauth2", "--token-url", "https://idp.example.com/token", "--client-id", "x").expect(t, exitOK)

	// Online operations on Vault: status and the audit check work; a
	// backup points at Vault's own snapshots and writes nothing.
	if r := c.run("", "status").expect(t, exitOK); !strings.Contains(r.stdout, "vault") {
		t.Errorf("status on Vault:\n%s", r.stdout)
	}
	if r := c.run("", "audit", "verify", "--online").expect(t, exitOK); !strings.Contains(r.stdout, "1 records, chain intact") {
		t.Errorf("online audit verify on Vault:\n%s", r.stdout)
	}
	out := filepath.Join(t.TempDir(), "backup.db")
	if r := c.run("", "store", "backup", "--online", "--out", out); r.code == exitOK || !strings.Contains(r.stderr, "vault operator raft snapshot save") {
		t.Errorf("online backup on Vault: exit %d\n%s", r.code, r.stderr)
	}
	if entries, err := os.ReadDir(filepath.Dir(out)); err != nil || len(entries) != 0 {
		t.Errorf("a refused backup left %v (%v)", entries, err)
	}

	// A second replica on the same Vault path sees it: the records live in Vault.
	serve()
	if r := c.run("", "credentials", "list").expect(t, exitOK); !strings.Contains(r.stdout, "onvault") {
		t.Fatalf("a replica on the same Vault path does not see the credential:\n%s", r.stdout)
	}
	if r := c.run("", "serve", "--addr", "127.0.0.1:0", "--data-dir", dir, "--store", "vault", "--vault-mount", "missing"); r.code == exitOK || !strings.Contains(r.stderr, "mount") {
		t.Fatalf("a missing mount was not refused at start-up: %d\n%s", r.code, r.stderr)
	}
}
