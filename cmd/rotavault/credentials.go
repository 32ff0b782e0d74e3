package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

const (
	listPageSize = 500
	// maxListPages bounds paging against a server that keeps answering
	// with a next page.
	maxListPages = 10000
	maxErrorCell = 80
)

func newCredentialsCmd(a *app) *cobra.Command {
	var client clientOptions
	cmd := &cobra.Command{
		Use:     "credentials",
		Aliases: []string{"credential", "creds"},
		Short:   "Manage credentials: which app a refresh token belongs to, and how it behaves",
		Long: `Manage credentials. A credential names a provider app (endpoints, client
id and secret, scopes, lifetimes) and holds at most one live token family.
Create it with ` + "`put`" + `, then install a family with ` + "`rotavault reauth`" + `.

Client secrets go in (from a file or stdin) and never come out: responses
say only whether one is set.`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRunE,
	}
	client.register(cmd)
	cmd.AddCommand(
		newCredentialsPutCmd(a, &client),
		newCredentialsUpdateCmd(a, &client),
		newCredentialsListCmd(a, &client),
		newCredentialsShowCmd(a, &client),
		newCredentialsDeleteCmd(a, &client),
		newCredentialsRevokeCmd(a, &client),
	)
	return cmd
}

func adminCall[T any](ctx context.Context, client *clientOptions, id string, f func(context.Context, rotavaultv1.CredentialAdminServiceClient) (T, error)) (T, error) {
	var resp T
	err := client.call(ctx, func(ctx context.Context, conn *grpc.ClientConn) error {
		var err error
		resp, err = f(ctx, rotavaultv1.NewCredentialAdminServiceClient(conn))
		return err
	})
	if err != nil {
		var zero T
		return zero, client.explain(err, id)
	}
	return resp, nil
}

func newCredentialsPutCmd(a *app, client *clientOptions) *cobra.Command {
	var spec specFlags
	cmd := &cobra.Command{
		Use:   "put ID --provider salesforce|oauth2 [flags]",
		Short: "Create a credential",
		Long: `Create the credential ID (lowercase letters, digits, '.', '_' and '-').
It has no token family yet: install one with ` + "`rotavault reauth`" + `.

Salesforce needs --base-url (the My Domain URL, or login/test.salesforce.com)
and derives its endpoints from it; Salesforce sends no token lifetime, so set
--access-token-lifetime to the app's session timeout (default 2h). Generic
OAuth 2.0 providers need --token-url, and --authorize-url for ` + "`reauth start`" + `.
The client secret is read from --client-secret-file (- for stdin), never
from a flag.

Examples:
  rotavault credentials put acme --provider salesforce \
      --base-url https://acme.my.salesforce.com --client-id 3MVG9... \
      --client-secret-file - --scope "api refresh_token" --access-token-lifetime 2h < secret.txt

  rotavault credentials put okta-app --provider oauth2 \
      --token-url https://example.okta.com/oauth2/v1/token \
      --authorize-url https://example.okta.com/oauth2/v1/authorize \
      --client-id 0oa... --client-secret-file okta.secret \
      --scope openid --scope offline_access --reuse-grace 30s`,
		Args:              args(cobra.ExactArgs(1)),
		ValidArgsFunction: cobra.NoFileCompletions, // a new id
		RunE: runE(func(cmd *cobra.Command, argv []string) error {
			id := argv[0]
			kind, err := parseProvider(spec.provider)
			if err != nil {
				return err
			}
			s, err := spec.spec(a, kind)
			if err != nil {
				return err
			}
			resp, err := adminCall(cmd.Context(), client, id, func(ctx context.Context, c rotavaultv1.CredentialAdminServiceClient) (*rotavaultv1.CreateCredentialResponse, error) {
				return c.CreateCredential(ctx, &rotavaultv1.CreateCredentialRequest{CredentialId: id, Spec: s})
			})
			if err != nil {
				return err
			}
			if client.json {
				return printJSON(a.stdout, resp.GetCredential())
			}
			fmt.Fprintf(a.stdout, "created credential %s; install a token family with `rotavault reauth device %s`, `rotavault reauth start %s --wait` or `rotavault reauth import %s`\n\n", id, id, id, id)
			return a.printCredential(resp.GetCredential())
		}),
	}
	spec.register(cmd.Flags(), true)
	return cmd
}

func newCredentialsUpdateCmd(a *app, client *clientOptions) *cobra.Command {
	var spec specFlags
	cmd := &cobra.Command{
		Use:   "update ID [flags]",
		Short: "Change some fields of a credential, keeping its token family",
		Long: `Change the fields of the credential ID whose flags are given, and only
those: the update mask is exactly the flags on the command line (no
environment variable stands in for them). An empty value clears a field,
e.g. --token-url "".
The provider cannot change; the token family is kept.

Rotating the app's client secret: create the new secret at the provider,
then

  rotavault credentials update acme --client-secret-file new-secret.txt

Examples:
  rotavault credentials update acme --scope api --scope refresh_token --scope web
  rotavault credentials update acme --access-token-lifetime 4h
  printf %s "$NEW_SECRET" | rotavault credentials update acme --client-secret-file -`,
		Args:              args(cobra.ExactArgs(1)),
		ValidArgsFunction: a.completeCredentialIDs(client, 1),
		RunE: runE(func(cmd *cobra.Command, argv []string) error {
			id := argv[0]
			paths := updateMask(cmd.Flags())
			if len(paths) == 0 {
				return usageErrorf("nothing to update: give at least one field flag (see --help)")
			}
			s, err := spec.spec(a, rotavaultv1.ProviderKind_PROVIDER_KIND_UNSPECIFIED)
			if err != nil {
				return err
			}
			resp, err := adminCall(cmd.Context(), client, id, func(ctx context.Context, c rotavaultv1.CredentialAdminServiceClient) (*rotavaultv1.UpdateCredentialResponse, error) {
				return c.UpdateCredential(ctx, &rotavaultv1.UpdateCredentialRequest{
					CredentialId: id, Spec: s, UpdateMask: &fieldmaskpb.FieldMask{Paths: paths},
				})
			})
			if err != nil {
				return err
			}
			if client.json {
				return printJSON(a.stdout, resp.GetCredential())
			}
			fmt.Fprintf(a.stdout, "updated %s: %s\n\n", id, strings.Join(paths, ", "))
			return a.printCredential(resp.GetCredential())
		}),
	}
	spec.register(cmd.Flags(), false)
	return cmd
}

func newCredentialsListCmd(a *app, client *clientOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List credentials with their status",
		Long: `List every credential in id order, at a glance: status, token generation,
when the current access token was issued and when it expires, the next
scheduled refresh and the last refresh problem. With --json, one credential
per line, for scripts: the same object ` + "`credentials show --json`" + ` prints.

Examples:
  rotavault credentials list
  rotavault credentials list --json | jq -r 'select(.status == "CREDENTIAL_STATUS_REVOKED") | .credentialId'`,
		Args: args(cobra.NoArgs),
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			out := &pagePrinter[*rotavaultv1.Credential]{w: a.stdout, json: client.json,
				header: "ID\tSTATUS\tGENERATION\tTOKEN ISSUED\tTOKEN EXPIRES\tNEXT REFRESH\tLAST ERROR",
				row: func(tw io.Writer, c *rotavaultv1.Credential) {
					lastErr := c.GetLastError()
					if lastErr == "" {
						lastErr = "-"
					}
					fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", c.GetCredentialId(), statusText(c), c.GetGeneration(),
						a.relativeOrDash(c.GetAccessTokenIssueTime()), a.relativeOrDash(c.GetAccessTokenExpireTime()),
						a.nextRefreshText(c.GetNextRefreshTime(), false), truncate(lastErr, maxErrorCell))
				}}
			if err := eachPage(credentialPages(cmd.Context(), client), out.page); err != nil {
				return err
			}
			return out.done("no credentials; create one with `rotavault credentials put`")
		}),
	}
	return cmd
}

// listCredentials returns every credential, in id order.
func listCredentials(ctx context.Context, client *clientOptions) ([]*rotavaultv1.Credential, error) {
	return listAll(credentialPages(ctx, client))
}

// credentialPages fetches one page of credentials.
func credentialPages(ctx context.Context, client *clientOptions) func(pageToken string) ([]*rotavaultv1.Credential, string, error) {
	return func(pageToken string) ([]*rotavaultv1.Credential, string, error) {
		resp, err := adminCall(ctx, client, "", func(ctx context.Context, c rotavaultv1.CredentialAdminServiceClient) (*rotavaultv1.ListCredentialsResponse, error) {
			return c.ListCredentials(ctx, &rotavaultv1.ListCredentialsRequest{PageSize: listPageSize, PageToken: pageToken})
		})
		return resp.GetCredentials(), resp.GetNextPageToken(), err
	}
}

func truncate(s string, n int) string {
	r := []rune(terminalSafe(s))
	if len(r) <= n {
		return string(r)
	}
	return string(r[:n-1]) + "…"
}

func newCredentialsShowCmd(a *app, client *clientOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Describe a credential and its token family",
		Long: `Describe the credential ID: its provider settings (never the client
secret, only whether one is set) and its token family: status, generation,
last rotation, access-token expiry, next scheduled refresh, last error.

Examples:
  rotavault credentials show acme
  rotavault credentials show acme --json | jq .generation

With --json it prints the credential as one JSON object, the same shape as
each line of ` + "`credentials list --json`" + ` (put and update print it too).`,
		Args:              args(cobra.ExactArgs(1)),
		ValidArgsFunction: a.completeCredentialIDs(client, 1),
		RunE: runE(func(cmd *cobra.Command, argv []string) error {
			id := argv[0]
			resp, err := adminCall(cmd.Context(), client, id, func(ctx context.Context, c rotavaultv1.CredentialAdminServiceClient) (*rotavaultv1.GetCredentialResponse, error) {
				return c.GetCredential(ctx, &rotavaultv1.GetCredentialRequest{CredentialId: id})
			})
			if err != nil {
				return err
			}
			if client.json {
				return printJSON(a.stdout, resp.GetCredential())
			}
			return a.printCredential(resp.GetCredential())
		}),
	}
}

func (a *app) printCredential(c *rotavaultv1.Credential) error {
	s := c.GetSpec()
	f := newFields(a.stdout)
	f.add("credential", c.GetCredentialId())
	f.add("status", statusText(c))
	f.add("provider", providerText(s.GetProviderKind()))
	f.addIf("base url", s.GetBaseUrl())
	f.addIf("token url", s.GetTokenUrl())
	f.addIf("authorize url", s.GetAuthorizeUrl())
	f.addIf("revocation url", s.GetRevocationUrl())
	f.addIf("introspection url", s.GetIntrospectionUrl())
	f.addIf("device authorization url", s.GetDeviceAuthorizationUrl())
	f.add("client id", s.GetClientId())
	secret := "not set"
	if c.GetHasClientSecret() {
		secret = "set"
	}
	f.add("client secret", secret)
	switch s.GetClientAuthMethod() {
	case rotavaultv1.ClientAuthMethod_CLIENT_AUTH_METHOD_CLIENT_SECRET_POST:
		f.add("client auth", "client_secret_post")
	case rotavaultv1.ClientAuthMethod_CLIENT_AUTH_METHOD_CLIENT_SECRET_BASIC:
		f.add("client auth", "client_secret_basic")
	}
	f.addIf("issuer", s.GetIssuer())
	if d := c.GetDiscoveredMetadata(); d != nil {
		f.add("metadata", d.GetMetadataUrl()+", fetched "+a.when(d.GetFetchTime()))
		f.addIf("  token url", d.GetTokenUrl())
		f.addIf("  authorize url", d.GetAuthorizeUrl())
		f.addIf("  revocation url", d.GetRevocationUrl())
		f.addIf("  introspection url", d.GetIntrospectionUrl())
		f.addIf("  device url", d.GetDeviceAuthorizationUrl())
		methods := "none listed (means client_secret_basic)"
		if m := d.GetTokenEndpointAuthMethods(); len(m) > 0 {
			methods = strings.Join(m, " ")
		}
		f.add("  auth methods", methods)
	}
	f.addIf("scopes", strings.Join(s.GetScopes(), " "))
	f.addIf("access lifetime", durationText(s.GetAccessTokenLifetime()))
	f.addIf("refresh idle", durationText(s.GetRefreshTokenIdleTimeout()))
	f.addIf("refresh max", durationText(s.GetRefreshTokenMaxLifetime()))
	f.addIf("reuse grace", durationText(s.GetReuseGracePeriod()))
	switch s.GetPreviousAccessToken() {
	case rotavaultv1.PreviousAccessToken_PREVIOUS_ACCESS_TOKEN_REVOKED:
		f.add("previous access token", "revoked at rotation")
	case rotavaultv1.PreviousAccessToken_PREVIOUS_ACCESS_TOKEN_KEPT:
		f.add("previous access token", "kept until expiry")
	}
	f.addIf("family", c.GetFamilyId())
	if c.GetFamilyId() != "" {
		f.add("generation", strconv.FormatUint(c.GetGeneration(), 10))
	}
	if c.GetLastRotationTime() != nil {
		f.add("last rotation", a.when(c.GetLastRotationTime()))
	}
	switch c.GetLastRefreshRotation() {
	case rotavaultv1.RefreshRotation_REFRESH_ROTATION_ROTATED:
		f.add("rotation", "on: the last refresh rotated the refresh token")
	case rotavaultv1.RefreshRotation_REFRESH_ROTATION_NOT_ROTATED:
		f.add("rotation", "off: the last refresh kept the same refresh token (rotation is not enabled at the provider)")
	}
	if c.GetAccessTokenIssueTime() != nil {
		f.add("access issued", a.when(c.GetAccessTokenIssueTime()))
	}
	if c.GetAccessTokenExpireTime() != nil {
		f.add("access expires", a.when(c.GetAccessTokenExpireTime()))
	}
	if c.GetNextRefreshTime() != nil {
		f.add("next refresh", a.nextRefreshText(c.GetNextRefreshTime(), true))
	}
	if ed := c.GetEarlyDetection(); ed != nil {
		f.add("early detection", earlyDetectionText(ed))
	}
	f.addIf("last error", c.GetLastError())
	f.add("created", a.when(c.GetCreateTime()))
	f.add("updated", a.when(c.GetUpdateTime()))
	return f.flush()
}

// earlyDetectionText is the state of periodic introspection and, unless
// active, why not.
func earlyDetectionText(ed *rotavaultv1.EarlyDetection) string {
	state := "unknown"
	switch ed.GetState() {
	case rotavaultv1.EarlyDetectionState_EARLY_DETECTION_STATE_ACTIVE:
		state = "active"
	case rotavaultv1.EarlyDetectionState_EARLY_DETECTION_STATE_DISABLED,
		rotavaultv1.EarlyDetectionState_EARLY_DETECTION_STATE_NO_INTROSPECTION_ENDPOINT,
		rotavaultv1.EarlyDetectionState_EARLY_DETECTION_STATE_NO_FAMILY,
		rotavaultv1.EarlyDetectionState_EARLY_DETECTION_STATE_WAITING_FOR_ACCESS_TOKEN:
		state = "inactive"
	}
	if ed.GetDetail() == "" {
		return state
	}
	return state + ": " + ed.GetDetail()
}

func newCredentialsDeleteCmd(a *app, client *clientOptions) *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "delete ID [--yes]",
		Short: "Delete a credential: revoke its family at the provider, destroy its secrets",
		Long: `Delete the credential ID: its token family is revoked at the provider (best
effort), and its refresh token and client secret are destroyed. Watchers get
a FAMILY_REVOKED notice. This cannot be undone: a new family needs a person
to log in again.

It asks for confirmation on a terminal. Without one (scripts, CI), --yes is
required.

Examples:
  rotavault credentials delete acme
  rotavault credentials delete acme --yes`,
		Args:              args(cobra.ExactArgs(1)),
		ValidArgsFunction: a.completeCredentialIDs(client, 1),
		RunE: runE(func(cmd *cobra.Command, argv []string) error {
			id := argv[0]
			if !yes {
				if err := a.confirm(id, "delete", "Delete %s? Its token family is revoked at the provider and its secrets are destroyed; a person must log in again to get a new one."); err != nil {
					return err
				}
			}
			resp, err := adminCall(cmd.Context(), client, id, func(ctx context.Context, c rotavaultv1.CredentialAdminServiceClient) (*rotavaultv1.DeleteCredentialResponse, error) {
				return c.DeleteCredential(ctx, &rotavaultv1.DeleteCredentialRequest{CredentialId: id})
			})
			if err != nil {
				return err
			}
			if client.json {
				return printJSON(a.stdout, resp)
			}
			_, err = fmt.Fprintf(a.stdout, "deleted %s\n", id)
			return err
		}),
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "delete without asking")
	return cmd
}

// confirm asks the person at the terminal to type the id back. warning is a
// format with one %s for the id.
func (a *app) confirm(id, verb, warning string) error {
	if !isTerminal(a.stdin) {
		return usageErrorf("refusing to %s %s without --yes: stdin is not a terminal to confirm on", verb, id)
	}
	fmt.Fprintf(a.stderr, warning+"\nType the credential id to confirm: ", id)
	line, err := bufio.NewReader(io.LimitReader(a.stdin, 1024)).ReadString('\n')
	if err != nil && line == "" {
		return fmt.Errorf("no confirmation: %w", err)
	}
	if strings.TrimSpace(line) != id {
		return fmt.Errorf("not confirmed; nothing was done to %s", id)
	}
	return nil
}

func newCredentialsRevokeCmd(a *app, client *clientOptions) *cobra.Command {
	var (
		yes    bool
		reason string
	)
	cmd := &cobra.Command{
		Use:   "revoke ID --reason TEXT [--yes]",
		Short: "Revoke a credential's token family, at the provider too; keep the credential",
		Long: `Revoke the token family of credential ID, for example after a suspected leak.
Rotavault marks the family revoked first (no replica refreshes it again), then
revokes the refresh token at the provider (Salesforce revokes the whole
family). Watchers get a FAMILY_REVOKED notice with reason ADMIN_REVOKED;
GetAccessToken fails with REAUTHENTICATION_REQUIRED until ` + "`rotavault reauth`" + `
installs a new family. The credential and its client secret are kept.

If the provider cannot be reached the family stays revoked in Rotavault and
the command says the provider revocation is unconfirmed (exit status 0):
run it again to retry at the provider. Revoking a revoked family changes
nothing. The reason (required, at most 512 bytes) goes to the audit log.

It asks for confirmation on a terminal. Without one (scripts, CI), --yes is
required. Operators may revoke the credentials the policy gives them.

Examples:
  rotavault credentials revoke acme --reason "laptop with the app stolen"
  rotavault credentials revoke acme --reason "INC-1234" --yes`,
		Args:              args(cobra.ExactArgs(1)),
		ValidArgsFunction: a.completeCredentialIDs(client, 1),
		RunE: runE(func(cmd *cobra.Command, argv []string) error {
			id := argv[0]
			if strings.TrimSpace(reason) == "" {
				return usageErrorf("--reason is required: say why, for the audit log")
			}
			if !yes {
				if err := a.confirm(id, "revoke", "Revoke the token family of %s? Consumers lose access until a person logs in again (rotavault reauth)."); err != nil {
					return err
				}
			}
			var resp *rotavaultv1.RevokeCredentialResponse
			err := client.call(cmd.Context(), func(ctx context.Context, conn *grpc.ClientConn) error {
				var err error
				resp, err = rotavaultv1.NewTokenVaultServiceClient(conn).RevokeCredential(ctx, &rotavaultv1.RevokeCredentialRequest{CredentialId: id, Reason: reason})
				return err
			})
			if err != nil {
				return client.explain(err, id)
			}
			if client.json {
				return printJSON(a.stdout, resp)
			}
			what := "revoked"
			if resp.GetAlreadyRevoked() {
				what = "already revoked"
			}
			if _, err := fmt.Fprintf(a.stdout, "%s: family %s (generation %d) %s\n", id, resp.GetFamilyId(), resp.GetGeneration(), what); err != nil {
				return err
			}
			switch resp.GetProviderRevocation() {
			case rotavaultv1.ProviderRevocation_PROVIDER_REVOCATION_CONFIRMED:
				_, err = fmt.Fprintln(a.stdout, "provider revocation: confirmed")
			case rotavaultv1.ProviderRevocation_PROVIDER_REVOCATION_UNCONFIRMED:
				_, err = fmt.Fprintf(a.stderr, "warning: the provider did not confirm the revocation; the refresh token may still be live there. Run this command again, or revoke it at the provider.\n")
			}
			return err
		}),
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why the family is revoked, for the audit log (required)")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "revoke without asking")
	return cmd
}

// isTerminal reports whether stream is a terminal a person types at or
// reads; /dev/null is a character device but not a terminal.
func isTerminal(stream any) bool {
	_, ok := terminalFD(stream)
	return ok
}
