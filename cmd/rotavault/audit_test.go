package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/boltstore"
)

func TestAuditVerify(t *testing.T) {
	dir := t.TempDir()
	keyFile, key := newKeyFile(t, t.TempDir(), "store.key")
	c := newCLI(t, nil)
	verify := func() result {
		return c.run("", "audit", "verify", "--data-dir", dir, "--store-key-file", keyFile)
	}
	putCredentials := func(ids ...string) {
		node := startNode(t, dir, keyFile, c.trans)
		c.env = map[string]string{"ROTAVAULT_ADDR": node.addr}
		for _, id := range ids {
			c.run("", "credentials", "put", id, "--provider", "oauth2", "--token-url", "https://idp.example.com/token", "--client-id", "x").expect(t, exitOK)
		}
		if r := verify().expect(t, exitError); !strings.Contains(r.stderr, "in use by a running server") {
			t.Errorf("verify while the server runs: %s", r.stderr)
		}
		node.stop(t)
	}

	putCredentials("a", "b", "c")
	r := verify().expect(t, exitOK)
	if !strings.Contains(r.stdout, "OK") || !strings.Contains(r.stdout, "3 records") || !strings.Contains(r.stdout, "anchored head (seq 3)") {
		t.Fatalf("verify: %s", r.stdout)
	}
	// A restarted server continues the chain.
	putCredentials("d")
	if r := verify().expect(t, exitOK); !strings.Contains(r.stdout, "4 records") {
		t.Fatalf("verify after a restart: %s", r.stdout)
	}

	path := filepath.Join(dir, auditFileName)
	clean, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(clean, []byte(`"action":"credential_created"`)); n != 4 {
		t.Fatalf("%d credential_created records, want 4:\n%s", n, clean)
	}
	lines := bytes.SplitAfter(clean, []byte("\n"))[:4]
	join := func(ls ...[]byte) []byte { return bytes.Join(ls, nil) }

	tests := []struct {
		name   string
		file   []byte // nil: the file is deleted
		want   string
		starts bool // the server still starts (damage away from the tail)
	}{
		{"one byte edited", join(lines[0], bytes.Replace(lines[1], []byte(`"b"`), []byte(`"x"`), 1), lines[2], lines[3]),
			"line 2 (seq 2): bad mac", true},
		{"middle record deleted", join(lines[0], lines[2], lines[3]), "line 2 (seq 3): seq gap", true},
		{"two records swapped", join(lines[0], lines[2], lines[1], lines[3]), "line 2 (seq 3): seq gap", true},
		{"tail truncated", join(lines[0], lines[1]), "line 3 (seq 3): truncated below anchor", false},
		{"file deleted", nil, "audit file missing", false},
		{"chain rebuilt with plain SHA-256", sha256Chain(t, lines, "b", "x"), "line 1 (seq 1): bad mac", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Cleanup(func() {
				if err := os.WriteFile(path, clean, 0o600); err != nil {
					t.Fatal(err)
				}
			})
			if tt.file == nil {
				if err := os.Remove(path); err != nil {
					t.Fatal(err)
				}
			} else if err := os.WriteFile(path, tt.file, 0o600); err != nil {
				t.Fatal(err)
			}
			r := verify().expect(t, exitError)
			if !strings.Contains(r.stderr, tt.want) {
				t.Fatalf("verify: %s, want %q", r.stderr, tt.want)
			}
			if tt.starts {
				return
			}
			err := runServer(context.Background(), serverConfig{Addr: "127.0.0.1:0", DataDir: dir, Key: key})
			if !errors.Is(err, audit.ErrChainBroken) || !strings.Contains(formatError(err), "hint: the server does not start a new audit chain") {
				t.Fatalf("server started over a broken trail, or without saying why: %v", err)
			}
			if tt.file == nil {
				if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("the refused start created a new trail: %v", err)
				}
			}
		})
	}

	r = verify().expect(t, exitOK)
	if !strings.Contains(r.stdout, "4 records") {
		t.Fatalf("verify after restoring the file: %s", r.stdout)
	}
	c.trans.assertNoSecrets(t, auditKeyHex(t, dir, key))
}

func TestAuditVerifyUsage(t *testing.T) {
	c := newCLI(t, nil)
	r := c.run("", "audit", "verify").expect(t, exitUsage)
	if !strings.Contains(r.stderr, "--data-dir is required") {
		t.Fatalf("stderr: %s", r.stderr)
	}
	c.run("", "audit", "nonsense").expect(t, exitUsage)
}

// sha256Chain rebuilds the trail as someone without the key would: the
// same layout, one field edited, each "mac" a plain SHA-256 of the
// previous one and the record.
func sha256Chain(t *testing.T, lines [][]byte, from, to string) []byte {
	t.Helper()
	var out []byte
	prev := make([]byte, 32)
	for i, line := range lines {
		line = bytes.TrimSuffix(line, []byte("\n"))
		body := string(line[:len(line)-74]) + "}"
		start := strings.Index(body, `"prev":"`) + len(`"prev":"`)
		body = body[:start] + hex.EncodeToString(prev) + body[start+64:]
		if i == 1 {
			body = strings.Replace(body, `"`+from+`"`, `"`+to+`"`, 1)
		}
		sum := sha256.Sum256(append(bytes.Clone(prev), body...))
		out = append(out, body[:len(body)-1]+`,"mac":"`+hex.EncodeToString(sum[:])+`"}`+"\n"...)
		prev = sum[:]
	}
	return out
}

// auditKeyHex reads the audit key from the store, to check that no output
// shows it.
func auditKeyHex(t *testing.T, dir string, key boltstore.Key) string {
	t.Helper()
	st, err := openStore(dir, key, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rec, err := st.Get(context.Background(), audit.KeyRecord)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(rec.Value)
}
