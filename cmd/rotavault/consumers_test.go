package main

import (
	"regexp"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// TestConsumersCommand lists the consumer catalog as a table and as JSON.
// The server flushes its counts when it stops, so the test restarts it on
// the same store instead of waiting for the interval.
func TestConsumersCommand(t *testing.T) {
	c, node, install := setupCLITest(t)
	install("acme")
	install("other")
	if r := c.run("", "consumers").expect(t, exitOK); !strings.Contains(r.stdout, "no consumers recorded yet") {
		t.Errorf("consumers before any use:\n%s", r.stdout)
	}
	// Each command is a new connection from 127.0.0.1: one consumer.
	for range 3 {
		c.run("", "token", "get", "acme").expect(t, exitOK)
	}
	c.run("", "token", "get", "other").expect(t, exitOK)
	node.stop(t)
	node = startNode(t, node.dataDir, node.keyFile, c.trans)
	c.env["ROTAVAULT_ADDR"] = node.addr

	table := c.run("", "consumers").expect(t, exitOK).stdout
	for _, re := range []string{
		`CREDENTIAL\s+IDENTITY\s+TOKENS\s+FIRST SEEN\s+LAST SEEN`,
		`(?m)^acme\s+dev-admin/peer:127\.0\.0\.1\s+3\s+\S+ \((now|.+ ago)\)\s+\S+ \((now|.+ ago)\)$`,
		`(?m)^other\s+dev-admin/peer:127\.0\.0\.1\s+1\s+`,
	} {
		if !regexp.MustCompile(re).MatchString(table) {
			t.Errorf("consumers table does not match %s:\n%s", re, table)
		}
	}

	lines := strings.Split(strings.TrimSpace(c.run("", "consumers", "--credential", "other", "--json").expect(t, exitOK).stdout), "\n")
	if len(lines) != 1 {
		t.Fatalf("consumers --credential other --json printed %d lines:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	var got rotavaultv1.Consumer
	if err := protojson.Unmarshal([]byte(lines[0]), &got); err != nil {
		t.Fatalf("consumers --json printed %q: %v", lines[0], err)
	}
	if got.GetCredentialId() != "other" || got.GetTokenCount() != 1 || got.GetFirstSeenTime() == nil || got.GetLastSeenTime() == nil {
		t.Errorf("consumers --json = %v; want other's one token with first and last seen", &got)
	}

	if r := c.run("", "consumers", "--credential", "missing").expect(t, exitNotFound); !strings.Contains(r.stderr, "(NOT_FOUND)") {
		t.Errorf("consumers of a missing credential:\n%s", r.stderr)
	}
	if r := c.run("", "consumers", "--credential", "Not An ID").expect(t, exitUsage); !strings.Contains(r.stderr, "(INVALID_ARGUMENT)") {
		t.Errorf("consumers of a malformed id:\n%s", r.stderr)
	}
	c.run("", "consumers", "acme").expect(t, exitUsage)
}

func TestIssuanceFlushFlagBounds(t *testing.T) {
	dir := t.TempDir()
	keyFile, _ := newKeyFile(t, dir, "store.key")
	c := newCLI(t, nil)
	for _, d := range []string{"0s", "10ms", "-1m"} {
		r := c.run("", "serve", "--addr", "127.0.0.1:0", "--data-dir", dir, "--store-key-file", keyFile, "--issuance-flush-interval", d).expect(t, exitUsage)
		if !strings.Contains(r.stderr, "--issuance-flush-interval") {
			t.Errorf("serve --issuance-flush-interval %s: %s", d, r.stderr)
		}
		c.run("", "dev", "--addr", "127.0.0.1:0", "--data-dir", dir, "--issuance-flush-interval", d).expect(t, exitUsage)
	}
}
