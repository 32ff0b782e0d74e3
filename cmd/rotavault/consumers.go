package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

const (
	// issuanceFlushFlag sets serverConfig.IssuanceFlushInterval (serve,
	// dev). Each flush writes one record per credential used since the
	// last: minIssuanceFlush keeps that load bounded.
	issuanceFlushFlag = "issuance-flush-interval"
	minIssuanceFlush  = time.Second
	// devIssuanceFlush is short, so that `rotavault consumers` shows a
	// newcomer's calls soon.
	devIssuanceFlush = 5 * time.Second
)

func newConsumersCmd(a *app) *cobra.Command {
	var (
		client     clientOptions
		credential string
	)
	cmd := &cobra.Command{
		Use:   "consumers [--credential ID]",
		Short: "List who took access tokens for which credential: the consumer catalog",
		Long: `List the consumer catalog: every caller identity that obtained access tokens
for a credential, with how many, when first and when last, over all
replicas. Catalog every consumer of a connected app before turning refresh
token rotation on: any consumer missing here still holds refresh tokens of
its own.

Replicas count in memory and add a new consumer within a minute (serve
--issuance-flush-interval), within two with replicas on Vault (the replica
holding the credential's duty shard merges the others' uses at its own
flush); counts and last-seen times of listed consumers are updated every ten
intervals and when the replica stops, so the newest uses may not show yet. A credential's catalog keeps at most 500 identities; servers log
tokens handed to further ones. Identities are what the server authenticated:
a SPIFFE ID, DNS name or certificate CN, or a bearer token's identity
(dev-admin/peer:HOST on a server without a policy). Needs the admin role.

With --json, one consumer per line.

Examples:
  rotavault consumers
  rotavault consumers --credential acme
  rotavault consumers --json | jq -r 'select(.credentialId == "acme") | .identity'`,
		Args: args(cobra.NoArgs),
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			out := &pagePrinter[*rotavaultv1.Consumer]{w: a.stdout, json: client.json,
				header: "CREDENTIAL\tIDENTITY\tTOKENS\tFIRST SEEN\tLAST SEEN",
				row: func(tw io.Writer, c *rotavaultv1.Consumer) {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", c.GetCredentialId(), c.GetIdentity(), c.GetTokenCount(),
						a.when(c.GetFirstSeenTime()), a.when(c.GetLastSeenTime()))
				}}
			err := eachPage(func(pageToken string) ([]*rotavaultv1.Consumer, string, error) {
				resp, err := adminCall(cmd.Context(), &client, credential, func(ctx context.Context, c rotavaultv1.CredentialAdminServiceClient) (*rotavaultv1.ListConsumersResponse, error) {
					return c.ListConsumers(ctx, &rotavaultv1.ListConsumersRequest{CredentialId: credential, PageSize: listPageSize, PageToken: pageToken})
				})
				return resp.GetConsumers(), resp.GetNextPageToken(), err
			}, out.page)
			if err != nil {
				return err
			}
			what := "no consumers recorded yet"
			if credential != "" {
				what = "no consumers of " + credential + " recorded yet"
			}
			return out.done(what + "; servers add new consumers every --issuance-flush-interval (default 1m; on Vault within two) and when they stop")
		}),
	}
	client.register(cmd)
	cmd.Flags().StringVar(&credential, "credential", "", "list only this credential's consumers")
	_ = cmd.RegisterFlagCompletionFunc("credential", a.completeCredentialIDs(&client, -1))
	return cmd
}
