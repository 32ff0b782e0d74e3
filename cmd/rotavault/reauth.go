package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/ctxwait"
)

func newReauthCmd(a *app) *cobra.Command {
	var client clientOptions
	cmd := &cobra.Command{
		Use:   "reauth",
		Short: "Install a new token family: authorization code + PKCE, device flow, or import a refresh token",
		Long: `Install a new token family for a credential: after a revocation, for a new
credential, or to migrate an integration that already has a refresh token.

` + "`reauth start`" + ` prints the URL to send a person to. Without --redirect-uri the
provider sends their browser back to the server's own callback
(<public URL>/oauth/callback), which finishes the flow; --wait waits for it.
With your own --redirect-uri, ` + "`reauth complete`" + ` exchanges the code the
redirect brought (read from a file or stdin, never from a flag).

` + "`reauth device`" + ` runs a device flow (Salesforce's, or RFC 8628): it shows a
code and a URL, the person approves on any device, and the server polls the
provider until they do. ` + "`reauth wait`" + ` waits for a flow begun earlier.

` + "`reauth import`" + ` installs a refresh token obtained elsewhere and refreshes it
at once to prove it works; from then on only Rotavault may use it.

Each success emits a FAMILY_ACTIVATED notice (see ` + "`rotavault watch`" + `).`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRunE,
	}
	client.register(cmd)
	cmd.AddCommand(newReauthStartCmd(a, &client), newReauthCompleteCmd(a, &client), newReauthImportCmd(a, &client),
		newReauthDeviceCmd(a, &client), newReauthWaitCmd(a, &client))
	return cmd
}

func reauthenticate(ctx context.Context, client *clientOptions, req *rotavaultv1.ReauthenticateRequest) (*rotavaultv1.ReauthenticateResponse, error) {
	var resp *rotavaultv1.ReauthenticateResponse
	err := client.call(ctx, func(ctx context.Context, conn *grpc.ClientConn) error {
		var err error
		resp, err = rotavaultv1.NewTokenVaultServiceClient(conn).Reauthenticate(ctx, req)
		return err
	})
	if err != nil {
		return nil, client.explain(err, req.GetCredentialId())
	}
	return resp, nil
}

// printActivation reports a newly installed family.
func (a *app) printActivation(client *clientOptions, id string, resp *rotavaultv1.ReauthenticateResponse) error {
	if client.json {
		return printJSON(a.stdout, resp)
	}
	act := resp.GetFamilyActivated()
	if act.GetUnproven() {
		// Stored: importing again would gain nothing, and a "retry later"
		// led people to do just that.
		fmt.Fprintf(a.stdout, "%s: stored, not yet proven; retrying (the provider could not be reached; the server refreshes it by itself, do not import it again)\n", id)
	} else {
		fmt.Fprintf(a.stdout, "%s: new token family active\n", id)
	}
	f := newFields(a.stdout)
	f.add("family", act.GetFamilyId())
	f.add("generation", strconv.FormatUint(act.GetGeneration(), 10))
	f.add("activated", a.when(act.GetActivateTime()))
	return f.flush()
}

func newReauthStartCmd(a *app, client *clientOptions) *cobra.Command {
	var (
		redirectURI string
		scopes      []string
		wait        bool
	)
	cmd := &cobra.Command{
		Use:   "start ID [--redirect-uri URI] [--wait]",
		Short: "Begin an authorization-code flow: print the URL to approve",
		Long: `Begin an authorization-code flow with PKCE for the credential ID and print
the authorize URL and the flow's state (single use, valid 10 minutes).

Without --redirect-uri the provider redirects the browser to the server's own
callback (<public URL>/oauth/callback; the server needs --public-url), which
completes the flow on whichever replica it reaches: register that URL with
the provider's app. --wait then waits until the flow ends.

With --redirect-uri (registered with the app: https, or http on loopback),
the browser lands at your URI with ?code=...&state=...; then run
` + "`rotavault reauth complete ID --state STATE --code-file FILE`" + `.

Salesforce issues refresh tokens only for the refresh_token (or
offline_access) scope: a flow that could not yield one is refused here,
before anyone logs in.

Examples:
  rotavault reauth start acme --wait
  rotavault reauth start acme --redirect-uri https://rotavault.internal/callback
  rotavault reauth start acme --redirect-uri http://127.0.0.1:8080/cb --scope "api refresh_token"`,
		Args:              args(cobra.ExactArgs(1)),
		ValidArgsFunction: a.completeCredentialIDs(client, 1),
		RunE: runE(func(cmd *cobra.Command, argv []string) error {
			id := argv[0]
			resp, err := reauthenticate(cmd.Context(), client, &rotavaultv1.ReauthenticateRequest{
				CredentialId: id,
				Flow: &rotavaultv1.ReauthenticateRequest_AuthorizationCodeStart{AuthorizationCodeStart: &rotavaultv1.AuthorizationCodeStart{
					RedirectUri: redirectURI, Scopes: splitScopes(scopes),
				}},
			})
			if err != nil {
				return explainFlow(err, id)
			}
			p := resp.GetAuthorizationPending()
			if client.json {
				if err := printJSON(a.stdout, resp); err != nil {
					return err
				}
			} else if err := a.printAuthorizationPending(id, p, redirectURI == "", wait); err != nil {
				return err
			}
			if !wait {
				return nil
			}
			fmt.Fprintf(a.stderr, "Waiting for the flow to end; Ctrl-C stops waiting, not the flow (resume with `rotavault reauth wait %s --state %s`).\n", id, p.GetState())
			final, err := a.waitForFlow(cmd.Context(), client, id, p.GetState())
			if err != nil {
				return err
			}
			return a.printActivation(client, id, final)
		}),
	}
	cmd.Flags().StringVar(&redirectURI, "redirect-uri", "", "where the provider sends the browser back with the code (default: the server's own callback)")
	cmd.Flags().StringArrayVar(&scopes, "scope", nil, "scopes for this flow instead of the credential's (repeatable, or space-separated)")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the flow ends (with the server's callback, or someone running reauth complete)")
	return cmd
}

func (a *app) printAuthorizationPending(id string, p *rotavaultv1.AuthorizationPending, serverCallback, wait bool) error {
	fmt.Fprintf(a.stdout, "Send the person who authorizes %s to:\n\n  %s\n\n", id, p.GetAuthorizeUrl())
	f := newFields(a.stdout)
	f.add("state", p.GetState())
	f.add("redirect", p.GetRedirectUri())
	f.add("expires", a.when(p.GetExpireTime()))
	if err := f.flush(); err != nil {
		return err
	}
	var err error
	switch {
	case wait:
	case serverCallback:
		_, err = fmt.Fprintf(a.stdout, "\nThe server's callback completes the flow. To wait for it:\n\n  rotavault reauth wait %s --state %s\n", id, p.GetState())
	default:
		_, err = fmt.Fprintf(a.stdout, "\nThen, with the code from the redirect in a file (or on stdin):\n\n  rotavault reauth complete %s --state %s --code-file FILE\n", id, p.GetState())
	}
	return err
}

func newReauthCompleteCmd(a *app, client *clientOptions) *cobra.Command {
	var state, codeFile string
	cmd := &cobra.Command{
		Use:   "complete ID --state STATE --code-file FILE|-",
		Short: "Finish an authorization-code flow with the code from the redirect",
		Long: `Finish the flow begun by ` + "`reauth start`" + `: exchange the authorization code
for a new token family. The code is read from --code-file, or from stdin
with --code-file - (surrounding whitespace is ignored); it never goes on the
command line, where shells and process lists record it.

Examples:
  rotavault reauth complete acme --state STATE --code-file code.txt
  pbpaste | rotavault reauth complete acme --state STATE --code-file -`,
		Args:              args(cobra.ExactArgs(1)),
		ValidArgsFunction: a.completeCredentialIDs(client, 1),
		RunE: runE(func(cmd *cobra.Command, argv []string) error {
			id := argv[0]
			if state == "" {
				return usageErrorf("--state is required (printed by `rotavault reauth start`)")
			}
			if codeFile == "" {
				return usageErrorf("--code-file is required (a file, or - for stdin)")
			}
			code, err := a.readSecret(codeFile, "authorization code")
			if err != nil {
				return err
			}
			resp, err := reauthenticate(cmd.Context(), client, &rotavaultv1.ReauthenticateRequest{
				CredentialId: id,
				Flow: &rotavaultv1.ReauthenticateRequest_AuthorizationCodeComplete{AuthorizationCodeComplete: &rotavaultv1.AuthorizationCodeComplete{
					State: state, Code: code,
				}},
			})
			if err != nil {
				return err
			}
			return a.printActivation(client, id, resp)
		}),
	}
	cmd.Flags().StringVar(&state, "state", "", "the state printed by 'rotavault reauth start' (required)")
	cmd.Flags().StringVar(&codeFile, "code-file", "", "file holding the authorization code, - for stdin (required)")
	return cmd
}

func newReauthImportCmd(a *app, client *clientOptions) *cobra.Command {
	var tokenFile string
	cmd := &cobra.Command{
		Use:   "import ID --refresh-token-file FILE|-",
		Short: "Install a refresh token obtained elsewhere",
		Long: `Import a refresh token for the credential ID, for example to migrate an
integration that has one. Rotavault stores it, then refreshes it at once to
prove it works: with rotating providers the imported token is dead from
then on, so nothing else may keep using it. If the provider cannot be
reached for that refresh, the token stays stored and the command says
"stored, not yet proven; retrying": the server refreshes it by itself
(credentials show: status unproven), so do not import it again.

The token is read from --refresh-token-file, or from stdin with
--refresh-token-file - (surrounding whitespace is ignored); never from a
flag, and it is never printed.

Examples:
  rotavault reauth import acme --refresh-token-file old-integration.token
  vault kv get -field=refresh_token secret/acme | rotavault reauth import acme --refresh-token-file -`,
		Args:              args(cobra.ExactArgs(1)),
		ValidArgsFunction: a.completeCredentialIDs(client, 1),
		RunE: runE(func(cmd *cobra.Command, argv []string) error {
			id := argv[0]
			if tokenFile == "" {
				return usageErrorf("--refresh-token-file is required (a file, or - for stdin)")
			}
			token, err := a.readSecret(tokenFile, "refresh token")
			if err != nil {
				return err
			}
			resp, err := reauthenticate(cmd.Context(), client, &rotavaultv1.ReauthenticateRequest{
				CredentialId: id,
				Flow: &rotavaultv1.ReauthenticateRequest_RefreshTokenImport{RefreshTokenImport: &rotavaultv1.RefreshTokenImport{
					RefreshToken: token,
				}},
			})
			if err != nil {
				return err
			}
			return a.printActivation(client, id, resp)
		}),
	}
	cmd.Flags().StringVar(&tokenFile, "refresh-token-file", "", "file holding the refresh token, - for stdin (required)")
	return cmd
}

func newReauthDeviceCmd(a *app, client *clientOptions) *cobra.Command {
	var (
		scopes []string
		noWait bool
	)
	cmd := &cobra.Command{
		Use:   "device ID [--scope SCOPE...]",
		Short: "Run a device flow: show a code and a URL, wait until a person approves",
		Long: `Begin a device authorization flow for the credential ID: Salesforce's own
device flow, or RFC 8628 for generic providers (their credential needs
--device-authorization-url). A person opens the URL on any device, enters
the code and approves; meanwhile the server polls the provider at the
provider's interval, and installs the new family when they approve.

The code and the URL go to stderr, for the person at the terminal; with
--json, stdout gets the pending flow and then the activation, one JSON
object per line. The command waits, printing progress, until the flow
ends: the new family, or a clear error when the person denies or the code
expires. Ctrl-C stops waiting, not the flow (another replica takes its
polling over if this server stops): resume with ` + "`rotavault reauth wait`" + `.

Salesforce issues refresh tokens only for the refresh_token (or
offline_access) scope: a flow that could not yield one is refused before it
starts.

Examples:
  rotavault reauth device acme
  rotavault reauth device acme --scope "api refresh_token" --json`,
		Args:              args(cobra.ExactArgs(1)),
		ValidArgsFunction: a.completeCredentialIDs(client, 1),
		RunE: runE(func(cmd *cobra.Command, argv []string) error {
			id := argv[0]
			resp, err := reauthenticate(cmd.Context(), client, &rotavaultv1.ReauthenticateRequest{
				CredentialId: id,
				Flow: &rotavaultv1.ReauthenticateRequest_DeviceAuthorizationStart{DeviceAuthorizationStart: &rotavaultv1.DeviceAuthorizationStart{
					Scopes: splitScopes(scopes),
				}},
			})
			if err != nil {
				return explainFlow(err, id)
			}
			p := resp.GetDeviceAuthorizationPending()
			if client.json {
				if err := printJSON(a.stdout, resp); err != nil {
					return err
				}
			}
			a.printDevicePending(id, p)
			if noWait {
				return nil
			}
			final, err := a.waitForFlow(cmd.Context(), client, id, p.GetState())
			if err != nil {
				return err
			}
			return a.printActivation(client, id, final)
		}),
	}
	cmd.Flags().StringArrayVar(&scopes, "scope", nil, "scopes for this flow instead of the credential's (repeatable, or space-separated)")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "print the code and return; follow up with rotavault reauth wait")
	return cmd
}

// printDevicePending tells the person at the terminal what to do, on
// stderr: the user code is for them, not for a pipeline's stdout.
func (a *app) printDevicePending(id string, p *rotavaultv1.DeviceAuthorizationPending) {
	var b strings.Builder
	fmt.Fprintf(&b, "To authorize %s, open\n\n  %s\n\nand enter the code\n\n  %s\n\n", id, p.GetVerificationUri(), p.GetUserCode())
	if c := p.GetVerificationUriComplete(); c != "" {
		fmt.Fprintf(&b, "(or open %s, which fills the code in)\n", c)
	}
	fmt.Fprintf(&b, "The code expires %s. The server polls the provider every %s.\n", a.when(p.GetExpireTime()), durationText(p.GetInterval()))
	fmt.Fprintf(&b, "Waiting stops with Ctrl-C, the flow does not: resume with\n  rotavault reauth wait %s --state %s\n", id, p.GetState())
	_, _ = io.WriteString(a.stderr, b.String())
}

func newReauthWaitCmd(a *app, client *clientOptions) *cobra.Command {
	var state string
	cmd := &cobra.Command{
		Use:   "wait ID --state STATE",
		Short: "Wait for a flow begun earlier to end",
		Long: `Wait for the authorization-code or device flow of STATE (printed when it
began) to end: print the new family, or fail with the reason (denied,
expired, refused by the provider). Progress goes to stderr.

Examples:
  rotavault reauth wait acme --state STATE`,
		Args:              args(cobra.ExactArgs(1)),
		ValidArgsFunction: a.completeCredentialIDs(client, 1),
		RunE: runE(func(cmd *cobra.Command, argv []string) error {
			id := argv[0]
			if state == "" {
				return usageErrorf("--state is required (printed when the flow began)")
			}
			final, err := a.waitForFlow(cmd.Context(), client, id, state)
			if err != nil {
				return err
			}
			return a.printActivation(client, id, final)
		}),
	}
	cmd.Flags().StringVar(&state, "state", "", "the flow's state, printed by reauth start or reauth device (required)")
	return cmd
}

const (
	// longPoll is how long one authorization_check may wait at the server:
	// below its 60 s maximum and the idle timeouts of common proxies.
	longPoll = 50 * time.Second
	// maxUnreachable bounds retries while the server cannot be reached (a
	// replica restarting); each waits unreachableBackoff.
	maxUnreachable     = 5
	unreachableBackoff = 2 * time.Second
	// expiryMargin lets a flow that ends right at its expiry report it.
	expiryMargin = time.Minute
)

// waitForFlow asks the server how the flow is doing until it ends, printing
// progress on stderr. It returns the activation, or the flow's error with a
// hint. The loop is bounded by the flow's expiry, which each pending answer
// states.
func (a *app) waitForFlow(ctx context.Context, client *clientOptions, id, state string) (*rotavaultv1.ReauthenticateResponse, error) {
	conn, err := client.dial()
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	svc := rotavaultv1.NewTokenVaultServiceClient(conn)
	req := &rotavaultv1.ReauthenticateRequest{CredentialId: id, Flow: &rotavaultv1.ReauthenticateRequest_AuthorizationCheck{
		AuthorizationCheck: &rotavaultv1.AuthorizationCheck{State: state, Wait: durationpb.New(longPoll)},
	}}
	// Until the first answer names the expiry, the longest flow the server
	// keeps bounds the wait.
	giveUp := a.now().Add(time.Hour + expiryMargin)
	unreachable := 0
	for a.now().Before(giveUp) {
		cctx, cancel := context.WithTimeout(ctx, longPoll+client.timeout)
		resp, err := svc.Reauthenticate(cctx, req)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil, withHint(ctx.Err(), "stopped waiting; the flow goes on: `rotavault reauth wait %s --state %s`", id, state)
			}
			if st, ok := grpcStatus(err); ok && (st.Code() == codes.Unavailable || st.Code() == codes.DeadlineExceeded) && unreachable < maxUnreachable {
				unreachable++
				fmt.Fprintf(a.stderr, "cannot reach the server (%s); retrying\n", codeName(st.Code()))
				if err := ctxwait.Sleep(ctx, unreachableBackoff); err != nil {
					return nil, err
				}
				continue
			}
			return nil, explainFlow(client.explain(err, id), id)
		}
		unreachable = 0
		if resp.GetFamilyActivated() != nil {
			return resp, nil
		}
		expires := resp.GetDeviceAuthorizationPending().GetExpireTime()
		if expires == nil {
			expires = resp.GetAuthorizationPending().GetExpireTime()
		}
		if expires != nil {
			giveUp = expires.AsTime().Add(expiryMargin)
		}
		fmt.Fprintf(a.stderr, "waiting for the person to approve (the flow expires %s)\n", a.when(expires))
	}
	return nil, fmt.Errorf("the flow of %s is still pending after its expiry: start a new one", id)
}

// Reasons of the flows' errors.
const (
	reasonAuthorizationDenied  = "AUTHORIZATION_DENIED"
	reasonAuthorizationExpired = "AUTHORIZATION_EXPIRED"
	reasonAuthorizationFailed  = "AUTHORIZATION_FAILED"
	reasonCallbackMissing      = "CALLBACK_NOT_CONFIGURED"
)

// explainFlow adds advice to the errors of reauthentication flows.
func explainFlow(err error, id string) error {
	st, ok := grpcStatus(err)
	if !ok {
		return err
	}
	switch errorReason(st) {
	case reasonAuthorizationDenied:
		return withHint(err, "the person refused at the provider; start again when they agree: `rotavault reauth device %s` or `rotavault reauth start %s`", id, id)
	case reasonAuthorizationExpired:
		return withHint(err, "nobody approved in time; start a new flow: `rotavault reauth device %s` or `rotavault reauth start %s`", id, id)
	case reasonAuthorizationFailed:
		return withHint(err, "the message says what the provider did; fix the credential's scopes or app if needed and start again")
	case reasonCallbackMissing:
		return withHint(err, "give --redirect-uri, or run the server with --public-url (and --http-listen) so it has its own callback")
	}
	return err
}
