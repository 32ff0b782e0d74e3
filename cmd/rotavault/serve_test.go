package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestServeRefusesNonLoopback(t *testing.T) {
	dir := t.TempDir()
	keyFile, key := newKeyFile(t, dir, "store.key")
	for _, addr := range []string{"0.0.0.0:0", ":7443", "[::]:0", "192.0.2.10:7443"} {
		t.Run(addr, func(t *testing.T) {
			err := runServer(context.Background(), serverConfig{Addr: addr, DataDir: dir, Key: key})
			if !isUsage(err) || !strings.Contains(err.Error(), "refusing to listen") {
				t.Fatalf("runServer(%s) = %v; want a refusal", addr, err)
			}
			c := newCLI(t, nil)
			r := c.run("", "serve", "--addr", addr, "--data-dir", dir, "--store-key-file", keyFile).expect(t, exitUsage)
			if !strings.Contains(r.stderr, "--insecure-plaintext-on-non-loopback") {
				t.Errorf("the refusal does not name the override:\n%s", r.stderr)
			}
			if _, err := os.Stat(filepath.Join(dir, storeFileName)); err == nil {
				t.Error("the store was opened before the address was refused")
			}
		})
	}
}

// servingAddr finds the address in serve's "rotavault serving" log line.
func servingAddr(t *testing.T, logs string) string {
	t.Helper()
	for _, line := range strings.Split(logs, "\n") {
		var rec struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "rotavault serving" {
			return rec.Addr
		}
	}
	t.Fatalf("no serving address in:\n%s", logs)
	return ""
}

func TestStoreMaintenance(t *testing.T) {
	dir := t.TempDir()
	keyDir := t.TempDir()
	keyFile, _ := newKeyFile(t, keyDir, "old.key")
	c := newCLI(t, nil)
	node := startNode(t, dir, keyFile, c.trans)
	c.env = map[string]string{"ROTAVAULT_ADDR": node.addr}
	c.run("", "credentials", "put", "kept", "--provider", "oauth2", "--token-url", "https://idp.example.com/token", "--client-id", "x").expect(t, exitOK)
	backup := filepath.Join(t.TempDir(), "backup.db")

	r := c.run("", "store", "backup", "--data-dir", dir, "--store-key-file", keyFile, "--out", backup).expect(t, exitError)
	if !strings.Contains(r.stderr, "in use by a running server; stop it first") {
		t.Errorf("backup of a store in use: %s", r.stderr)
	}
	if _, err := os.Stat(backup); err == nil {
		t.Error("a failed backup left a file behind")
	}
	node.stop(t)

	c.run("", "store", "backup", "--data-dir", dir, "--store-key-file", keyFile, "--out", backup).expect(t, exitOK)
	if mode := fileMode(t, backup); mode != 0o600 {
		t.Errorf("backup mode %v, want 0600", mode)
	}
	r = c.run("", "store", "backup", "--data-dir", dir, "--store-key-file", keyFile, "--out", backup).expect(t, exitUsage)
	if !strings.Contains(r.stderr, "exists") {
		t.Errorf("backup over an existing file: %s", r.stderr)
	}

	newKey := filepath.Join(keyDir, "new.key")
	c.run("", "store", "generate-key", "--out", newKey).expect(t, exitOK)
	if mode := fileMode(t, newKey); mode != 0o600 {
		t.Errorf("generated key mode %v, want 0600", mode)
	}
	r = c.run("", "store", "rotate-key", "--data-dir", dir, "--store-key-file", keyFile, "--new-key-file", newKey).expect(t, exitOK)
	if !strings.Contains(r.stdout, "re-encrypted ") || strings.Contains(r.stdout, "re-encrypted 0 ") || !strings.Contains(r.stdout, "--store-key-file "+newKey) {
		t.Errorf("rotate-key output:\n%s", r.stdout)
	}
	r = c.run("", "store", "backup", "--data-dir", dir, "--store-key-file", keyFile, "--out", backup+"2").expect(t, exitError)
	if !strings.Contains(r.stderr, "sealed under another key") {
		t.Errorf("the old key still opens the store after rotate-key: %s", r.stderr)
	}

	tests := []struct {
		name, dataDir, key string
	}{
		{"the rotated store with the new key", dir, newKey},
		{"the backup with the old key", restoreDir(t, backup, filepath.Join(dir, auditFileName)), keyFile},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := startNode(t, tt.dataDir, tt.key, c.trans)
			show := c.runEnv(map[string]string{"ROTAVAULT_ADDR": n.addr}, "", "credentials", "show", "kept").expect(t, exitOK)
			if !strings.Contains(show.stdout, "https://idp.example.com/token") {
				t.Errorf("credential lost:\n%s", show.stdout)
			}
			n.stop(t)
		})
	}
}

// restoreDir puts a backup in place as a new data directory's store, with
// the audit trail: the store anchors the trail's head, and a server refuses
// a store whose trail is missing.
func restoreDir(t *testing.T, backup, auditTrail string) string {
	t.Helper()
	dir := t.TempDir()
	for src, dst := range map[string]string{backup: storeFileName, auditTrail: auditFileName} {
		raw, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dst), raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
