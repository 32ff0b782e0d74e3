package main

import (
	"bufio"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/rotavault/rotavault/server"
)

// newBearerLineCmd prints the --bearer-tokens line for a token read from
// stdin, so that operators need not assemble SHA-256 digests by hand and the
// token never appears in a command line or shell history.
func newBearerLineCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "bearer-line IDENTITY",
		Short: "Print the bearer-tokens file line for a token read from stdin",
		Long: `Read one bearer token from stdin and print the line that grants it
IDENTITY in the file given to serve --bearer-tokens:

  IDENTITY <sha256-hex-of-token>

The server stores only the digest. The token is read from stdin, never from a
flag, so it stays out of shell history and process listings.

Example:
  head -c 32 /dev/urandom | base64 > payments.token
  rotavault bearer-line spiffe://example.org/ns/payments/sa/billing < payments.token >> tokens`,
		Args: args(cobra.ExactArgs(1)),
		RunE: runE(func(_ *cobra.Command, argv []string) error {
			identity := argv[0]
			if identity == "" || strings.ContainsAny(identity, " \t\r\n") {
				return usageErrorf("IDENTITY must be non-empty and contain no whitespace")
			}
			// The server would refuse the tokens file holding the line.
			if err := server.CheckBearerIdentity(identity); err != nil {
				return usageErrorf("IDENTITY %s: %v", identity, err)
			}
			sc := bufio.NewScanner(a.stdin)
			sc.Buffer(make([]byte, 0, 4096), 64<<10)
			if !sc.Scan() {
				if err := sc.Err(); err != nil {
					return fmt.Errorf("reading the token from stdin: %w", err)
				}
				return usageErrorf("no token on stdin")
			}
			token := strings.TrimSpace(sc.Text())
			if token == "" {
				return usageErrorf("no token on stdin")
			}
			_, err := fmt.Fprintf(a.stdout, "%s %s\n", identity, server.TokenDigest(token))
			return err
		}),
	}
}
