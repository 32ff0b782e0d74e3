package main

import (
	"strings"
	"testing"
)

// A reuse grace period a refresh claim cannot fit in is refused where it
// is set, and serve refuses to start with a claim margin a stored one
// cannot fit: the family such a claim would lose is found out at start,
// not at the first crash.
func TestReuseGraceTooShortIsRefusedBySetAndServe(t *testing.T) {
	c, node, _ := setupCLITest(t)
	put := func(grace string) result {
		return c.run(simClientSecret+"\n", "credentials", "put", "okta", "--provider", "oauth2", "--token-url", "https://idp.example.com/token",
			"--client-id", simClientID, "--client-secret-file", "-", "--reuse-grace", grace)
	}
	if r := put("10s").expect(t, exitUsage); !strings.Contains(r.stderr, "REUSE_GRACE_TOO_SHORT") {
		t.Errorf("a 10s grace: stderr lacks the reason:\n%s", r.stderr)
	}
	put("20s").expect(t, exitOK) // the smallest accepted with the default 15 s margin
	node.stop(t)
	r := c.run("", "serve", "--addr", "127.0.0.1:0", "--data-dir", node.dataDir, "--store-key-file", node.keyFile,
		"--refresh-claim-ttl", "90s", "--refresh-claim-margin", "30s")
	if r.code == exitOK || !strings.Contains(r.stderr, "okta") || !strings.Contains(r.stderr, "reuse_grace_period") {
		t.Fatalf("serve with a 30s claim margin and a stored 20s grace: exit %d\n%s", r.code, r.stderr)
	}
}
