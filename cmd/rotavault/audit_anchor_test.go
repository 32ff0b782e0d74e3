package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/boltstore"
	"github.com/rotavault/rotavault/internal/poll"
)

// With write access to the data directory and no key, the end of the
// trail could vanish: delete the store's head record, or copy an older
// rotavault.db back and cut the file to match. The first is refused by
// verify and at start (a flag accepts it, and the trail records that); the
// second is caught against the witness serve ships the heads to.
func TestAuditHeadDeletedOrStoreRolledBack(t *testing.T) {
	dir := t.TempDir()
	keyFile, key := newKeyFile(t, t.TempDir(), "store.key")
	witness := filepath.Join(t.TempDir(), "witness.log")
	c := newCLI(t, nil)
	session := func(ids ...string) {
		node := startNode(t, dir, keyFile, c.trans, func(cfg *serverConfig) { cfg.AuditWitness = witness })
		c.env = map[string]string{"ROTAVAULT_ADDR": node.addr}
		for _, id := range ids {
			c.run("", "credentials", "put", id, "--provider", "oauth2", "--token-url", "https://idp.example.com/token", "--client-id", "x").expect(t, exitOK)
		}
		node.stop(t)
	}
	verify := func(extra ...string) result {
		return c.run("", append([]string{"audit", "verify", "--data-dir", dir, "--store-key-file", keyFile}, extra...)...)
	}
	dbPath, trailPath := filepath.Join(dir, storeFileName), filepath.Join(dir, auditFileName)

	session("a", "b", "c")
	backup := readFile(t, dbPath)
	session("d", "e")
	if r := verify("--witness", witness).expect(t, exitOK); !strings.Contains(r.stdout, "5 records") || !strings.Contains(r.stdout, "not older than its witness (seq 5)") {
		t.Fatalf("verify with the witness: %s", r.stdout)
	}
	clean := readFile(t, trailPath)

	t.Run("store rolled back to a backup", func(t *testing.T) {
		current := readFile(t, dbPath)
		t.Cleanup(func() { writeFile(t, dbPath, current); writeFile(t, trailPath, clean) })
		writeFile(t, dbPath, backup)
		writeFile(t, trailPath, bytes.Join(bytes.SplitAfter(clean, []byte("\n"))[:3], nil))
		// Documented: without the witness this goes unnoticed.
		if r := verify().expect(t, exitOK); !strings.Contains(r.stdout, "3 records") || !strings.Contains(r.stdout, "no --witness") {
			t.Fatalf("verify without the witness: %s", r.stdout)
		}
		if r := verify("--witness", witness).expect(t, exitError); !strings.Contains(r.stderr, "store older than its witness") {
			t.Fatalf("verify with the witness: %s", r.stderr)
		}
	})

	t.Run("head record deleted", func(t *testing.T) {
		st, err := openStore(dir, key, boltstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Delete(context.Background(), audit.DefaultHeadKey); err != nil {
			t.Fatal(err)
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		if r := verify().expect(t, exitError); !strings.Contains(r.stderr, "no anchored head") {
			t.Fatalf("verify: %s", r.stderr)
		}
		serve := []string{"serve", "--addr", "127.0.0.1:0", "--data-dir", dir, "--store-key-file", keyFile}
		if r := c.run("", serve...).expect(t, exitError); !strings.Contains(r.stderr, "no anchored head") || !strings.Contains(r.stderr, "--"+acceptMissingAnchorFlag) {
			t.Fatalf("serve over a deleted head: %s", r.stderr)
		}
		bg := c.start(nil, append(serve, "--"+acceptMissingAnchorFlag)...)
		poll.Until(t, awaitDeadline, "the server serving", func() bool {
			return strings.Contains(bg.stderr.String(), "rotavault serving")
		})
		if code := bg.stop(t); code != exitOK {
			t.Fatalf("serve --%s exited %d: %s", acceptMissingAnchorFlag, code, bg.stderr.String())
		}
		lines := bytes.SplitAfter(readFile(t, trailPath), []byte("\n"))
		if last := lines[len(lines)-2]; !bytes.Contains(last, []byte(`"actor":"operator (--`+acceptMissingAnchorFlag+`)","action":"`+audit.ActionAnchorMissingAccepted)) {
			t.Fatalf("last record %s, want the acceptance", last)
		}
		if r := verify("--witness", witness).expect(t, exitOK); !strings.Contains(r.stdout, "6 records") {
			t.Fatalf("verify after the accepted start: %s", r.stdout)
		}
	})
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
