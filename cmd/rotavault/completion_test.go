package main

import (
	"strings"
	"testing"
)

// TestCompletionOffersCredentialIDs: Tab after a command taking a
// credential id offers the server's ids (cobra's __complete protocol, which
// the generated bash, zsh and fish scripts call), found with the same
// ROTAVAULT_ADDR the command would use.
func TestCompletionOffersCredentialIDs(t *testing.T) {
	c, _, _ := setupCLITest(t)
	for _, id := range []string{"acme", "acme-sandbox", "billing"} {
		c.run("", "credentials", "put", id, "--provider", "oauth2", "--token-url", "https://idp.example.com/token", "--client-id", "x").expect(t, exitOK)
	}
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"token", "get", ""}, []string{"acme", "acme-sandbox", "billing"}},
		{[]string{"credentials", "show", "ac"}, []string{"acme", "acme-sandbox"}},
		{[]string{"reauth", "device", "b"}, []string{"billing"}},
		{[]string{"watch", "acme", "b"}, []string{"billing"}},
		{[]string{"consumers", "--credential", "bi"}, []string{"billing"}},
		{[]string{"token", "get", "acme", ""}, nil}, // one id only
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			r := c.run("", append([]string{"__complete"}, tt.args...)...).expect(t, exitOK)
			var got []string
			for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
				if strings.HasPrefix(line, ":") {
					if line != ":4" { // ShellCompDirectiveNoFileComp
						t.Errorf("directive %s, want :4 (no file names)", line)
					}
					continue
				}
				got = append(got, strings.SplitN(line, "\t", 2)[0])
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("completions %q, want %q", got, tt.want)
			}
		})
	}
}
