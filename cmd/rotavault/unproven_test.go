package main

import (
	"net"
	"strings"
	"testing"
)

// reauth import with the provider unreachable stored the token but said
// "retry later", which led people to import it again: it now says the token
// is stored and retried, and show and list give it a status of its own.
func TestImportWithTheProviderUnreachableSaysStoredNotYetProven(t *testing.T) {
	c, _, _ := setupCLITest(t)
	sim := startSim(t) // issues the token only: the credential points elsewhere
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	unreachable := "http://" + lis.Addr().String()
	_ = lis.Close()
	c.run(simClientSecret+"\n", "credentials", "put", "acme", "--provider", "salesforce", "--base-url", unreachable,
		"--client-id", simClientID, "--client-secret-file", "-", "--scope", "api refresh_token").expect(t, exitOK)
	rt := issueRefreshToken(t, sim)
	t.Cleanup(func() { c.trans.assertNoSecrets(t, simClientSecret, rt) })
	imp := c.run(rt+"\n", "reauth", "import", "acme", "--refresh-token-file", "-").expect(t, exitOK)
	if !strings.Contains(imp.stdout, "stored, not yet proven; retrying") || strings.Contains(imp.stdout+imp.stderr, "retry later") {
		t.Fatalf("reauth import said:\n%s%s", imp.stdout, imp.stderr)
	}
	for _, cmd := range [][]string{{"credentials", "show", "acme"}, {"credentials", "list"}} {
		if out := c.run("", cmd...).expect(t, exitOK); !strings.Contains(out.stdout, "unproven") {
			t.Errorf("%s lacks the unproven status:\n%s", strings.Join(cmd, " "), out.stdout)
		}
	}
}
