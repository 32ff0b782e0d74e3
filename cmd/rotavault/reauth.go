package main

import (
	"context"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

func newReauthCmd(a *app) *cobra.Command {
	var client clientOptions
	cmd := &cobra.Command{
		Use:   "reauth",
		Short: "Install a new token family: authorization code + PKCE, or import a refresh token",
		Long: `Install a new token family for a credential: after a revocation, for a new
credential, or to migrate an integration that already has a refresh token.

The authorization-code flow takes two steps: ` + "`reauth start`" + ` prints the URL to
send a person to; after they approve, the provider redirects to your
redirect URI with a code, which ` + "`reauth complete`" + ` exchanges. The code is read
from a file or stdin, never from a flag. ` + "`reauth import`" + ` installs a refresh
token obtained elsewhere and refreshes it at once to prove it works; from
then on only Rotavault may use it.

Each success emits a FAMILY_ACTIVATED notice (see ` + "`rotavault watch`" + `).`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRunE,
	}
	client.register(cmd)
	cmd.AddCommand(newReauthStartCmd(a, &client), newReauthCompleteCmd(a, &client), newReauthImportCmd(a, &client))
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
	fmt.Fprintf(a.stdout, "%s: new token family active\n", id)
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
	)
	cmd := &cobra.Command{
		Use:   "start ID --redirect-uri URI",
		Short: "Begin an authorization-code flow: print the URL to approve",
		Long: `Begin an authorization-code flow with PKCE for the credential ID and print
the authorize URL and the flow's state (single use, valid 10 minutes).

The redirect URI must be registered with the provider's app: https, or
http on loopback. Send a person to the URL; the provider redirects their
browser to the redirect URI with ?code=...&state=...; then run
` + "`rotavault reauth complete ID --state STATE --code-file FILE`" + `.

Salesforce issues refresh tokens only for the refresh_token (or
offline_access) scope: a flow that could not yield one is refused here,
before anyone logs in.

Examples:
  rotavault reauth start acme --redirect-uri https://rotavault.internal/callback
  rotavault reauth start acme --redirect-uri http://127.0.0.1:8080/cb --scope "api refresh_token"`,
		Args: args(cobra.ExactArgs(1)),
		RunE: runE(func(cmd *cobra.Command, argv []string) error {
			id := argv[0]
			if redirectURI == "" {
				return usageErrorf("--redirect-uri is required")
			}
			resp, err := reauthenticate(cmd.Context(), client, &rotavaultv1.ReauthenticateRequest{
				CredentialId: id,
				Flow: &rotavaultv1.ReauthenticateRequest_AuthorizationCodeStart{AuthorizationCodeStart: &rotavaultv1.AuthorizationCodeStart{
					RedirectUri: redirectURI, Scopes: splitScopes(scopes),
				}},
			})
			if err != nil {
				return err
			}
			if client.json {
				return printJSON(a.stdout, resp)
			}
			p := resp.GetAuthorizationPending()
			fmt.Fprintf(a.stdout, "Send the person who authorizes %s to:\n\n  %s\n\n", id, p.GetAuthorizeUrl())
			f := newFields(a.stdout)
			f.add("state", p.GetState())
			f.add("expires", a.when(p.GetExpireTime()))
			if err := f.flush(); err != nil {
				return err
			}
			_, err = fmt.Fprintf(a.stdout, "\nThen, with the code from the redirect in a file (or on stdin):\n\n  rotavault reauth complete %s --state %s --code-file FILE\n", id, p.GetState())
			return err
		}),
	}
	cmd.Flags().StringVar(&redirectURI, "redirect-uri", "", "where the provider sends the browser back with the code (required)")
	cmd.Flags().StringArrayVar(&scopes, "scope", nil, "scopes for this flow instead of the credential's (repeatable, or space-separated)")
	return cmd
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
		Args: args(cobra.ExactArgs(1)),
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
then on, so nothing else may keep using it.

The token is read from --refresh-token-file, or from stdin with
--refresh-token-file - (surrounding whitespace is ignored); never from a
flag, and it is never printed.

Examples:
  rotavault reauth import acme --refresh-token-file old-integration.token
  vault kv get -field=refresh_token secret/acme | rotavault reauth import acme --refresh-token-file -`,
		Args: args(cobra.ExactArgs(1)),
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
