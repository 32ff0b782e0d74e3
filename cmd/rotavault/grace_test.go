package main

import (
	"strings"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/option"
)

// A reuse grace period a refresh claim cannot fit in is refused where it
// is set; a serve whose claim margin a stored one cannot fit starts (its
// other credentials are served), says so at ERROR naming the credential,
// and refuses that credential's calls with the reason, rather than rotate
// it under a claim that could lose its family.
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
	longer := startNode(t, node.dataDir, node.keyFile, c.trans, func(cfg *serverConfig) {
		cfg.BrokerOptions = append(cfg.BrokerOptions, option.WithClaimTiming(90*time.Second, 30*time.Second))
	})
	c.env["ROTAVAULT_ADDR"] = longer.addr
	if r := c.run("", "token", "get", "okta"); r.code == exitOK || !strings.Contains(r.stderr, "REUSE_GRACE_TOO_SHORT") {
		t.Errorf("token get okta with a 30s claim margin and a stored 20s grace: exit %d\n%s", r.code, r.stderr)
	}
	line := longer.logs.WaitFor(t, "reuse_grace_period", 10*time.Second)
	if !strings.Contains(line, "ERROR") || !strings.Contains(line, "okta") {
		t.Errorf("the refused credential's log line: %s", line)
	}
}
