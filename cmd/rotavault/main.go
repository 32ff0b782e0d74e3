// Command rotavault is Rotavault's one binary: the server (serve, dev), its
// command-line client (token, reauth, watch, credentials) and offline store
// maintenance (store). It only wires the packages together; the rotation
// logic lives in broker, the transport in server.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal starts a graceful stop, a second one kills the
	// process the default way, in case the stop hangs.
	context.AfterFunc(ctx, stop)
	code := execute(ctx, newRootCmd(os.Stdin, os.Stdout, os.Stderr, os.Getenv), os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}

// app is what every command shares: its I/O, the environment, and the
// flags that the environment filled in. One app per root command.
type app struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	env    func(string) string
	now    func() time.Time
	// sources says where flags not given on the command line got their
	// value: sourceEnv or sourceConfig.
	sources map[string]string
}

// newRootCmd builds the command tree. env looks up environment variables
// (os.Getenv in main; a map in tests).
func newRootCmd(stdin io.Reader, stdout, stderr io.Writer, env func(string) string) *cobra.Command {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr, env: env, now: time.Now, sources: make(map[string]string)}
	root := &cobra.Command{
		Use:   "rotavault",
		Short: "A credential vault that owns OAuth refresh tokens",
		Long: `Rotavault holds each credential's OAuth refresh token and hands out access
tokens only. Providers that rotate refresh tokens (Salesforce, Okta, Auth0,
Hydra, Keycloak) revoke a whole token family when an old refresh token is
used twice; Rotavault makes sure every rotation happens once, is stored
before anyone sees the new access token, and tells you when a family dies.

One binary is the server and its client. Start here:

  rotavault dev                    # server + Salesforce simulator on loopback, credential "demo"
  rotavault token get demo         # in another terminal

Environment: client commands read their connection settings from
ROTAVAULT_ADDR (--server), ROTAVAULT_CACERT (--tls-ca), ROTAVAULT_CLIENT_CERT
(--tls-cert), ROTAVAULT_CLIENT_KEY (--tls-key), ROTAVAULT_TOKEN_FILE
(--token-file) and ROTAVAULT_CLIENT_TIMEOUT (--timeout). serve reads each of
its flags from ROTAVAULT_SERVER_<FLAG> (--data-dir is
ROTAVAULT_SERVER_DATA_DIR; repeatable flags take comma-separated lists), and
a --config file; agent reads its own from ROTAVAULT_AGENT_<FLAG>. A flag on the command line wins over its variable. Flags
that decide one call (--scope, --yes, --reason…) have no variable. Secrets
(client secrets, refresh tokens, authorization codes) are read from files
or stdin, never from flags.

Exit codes: 0 success, 1 failed (other), 2 misused (a bad flag or argument,
INVALID_ARGUMENT), 3 not found, 4 not authorized (UNAUTHENTICATED,
PERMISSION_DENIED), 5 unavailable: worth a retry, 6 reauthentication
required, 7 already exists, 8 watch cursor expired; agent --exec exits
with its command's status. With --json, errors are one JSON object on
stderr.`,
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          cobra.ArbitraryArgs,
		RunE:          groupRunE,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return a.applySettings(cmd)
		},
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &usageError{msg: err.Error()}
	})
	root.AddCommand(
		newServeCmd(a),
		newDevCmd(a),
		newTokenCmd(a),
		newReauthCmd(a),
		newWatchCmd(a),
		newAgentCmd(a),
		newCredentialsCmd(a),
		newConsumersCmd(a),
		newStatusCmd(a),
		newStoreCmd(a),
		newAuditCmd(a),
		newBearerLineCmd(a),
	)
	addVersion(root, a)
	documentEnv(root)
	return root
}

// groupRunE runs a command that only groups others: alone it shows help,
// with an argument it names the unknown subcommand (cobra would show help
// and succeed).
func groupRunE(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return cmd.Help()
	}
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += "; did you mean " + strings.Join(s, " or ") + "?"
	}
	return usageErrorf("%s", msg)
}

// commandError marks a failure of the command's work (exit code 1); any
// other error cobra returns is a usage error.
type commandError struct{ err error }

func (e *commandError) Error() string { return e.err.Error() }
func (e *commandError) Unwrap() error { return e.err }

// runE adapts a command's function so that its failures are told apart
// from cobra's own (unknown flags, wrong argument counts).
func runE(f func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		err := f(cmd, args)
		var u *usageError
		if err == nil || errors.As(err, &u) {
			return err
		}
		return &commandError{err: err}
	}
}

// args wraps a cobra argument validator so its complaints are usage errors.
func args(v cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, a []string) error {
		if err := v(cmd, a); err != nil {
			return &usageError{msg: err.Error()}
		}
		return nil
	}
}

// execute runs the command line and returns the exit code (see
// exitcodes.go), writing errors to stderr: for people, or as one JSON
// object when the command was given --json.
func execute(ctx context.Context, root *cobra.Command, argv []string, stderr io.Writer) int {
	root.SetArgs(argv)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	if cmd == nil {
		cmd = root
	}
	var cerr *commandError
	usage := !errors.As(err, &cerr)
	code := exitCode(err, usage)
	if wantsJSON(cmd) {
		writeJSONError(stderr, err, code)
		return code
	}
	if !usage {
		fmt.Fprintln(stderr, formatError(err))
		return code
	}
	fmt.Fprintln(stderr, "error:", err)
	fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	return code
}
