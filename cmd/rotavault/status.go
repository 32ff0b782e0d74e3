package main

import (
	"context"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

func newStatusCmd(a *app) *cobra.Command {
	var client clientOptions
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show whether the server is reachable and ready, its version, store and credentials",
		Long: `Show the server's state, as vault status does: whether it answers, the
version it was built from, its store backend and whether it reaches it
(ready), and its credentials by status. Needs the admin role.

Exit status: 0 when the server is ready; 5 when it is unreachable or not
ready (worth a retry: the store is unreachable, or the server is shutting
down), with the status printed when the server answered; 4 when the
caller is not an admin. With --json the answer is one JSON object on
stdout (and a failure one on stderr).

Examples:
  rotavault status
  rotavault status --json | jq '.credentialCounts'`,
		Args: args(cobra.NoArgs),
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			resp, err := adminCall(cmd.Context(), &client, "", func(ctx context.Context, c rotavaultv1.CredentialAdminServiceClient) (*rotavaultv1.GetServerStatusResponse, error) {
				return c.GetServerStatus(ctx, &rotavaultv1.GetServerStatusRequest{})
			})
			if err != nil {
				return err
			}
			if client.json {
				err = printJSON(a.stdout, resp)
			} else {
				err = a.printStatus(client.server, resp)
			}
			if err != nil {
				return err
			}
			if !resp.GetReady() {
				// UNAVAILABLE: exit 5, worth a retry.
				return status.Errorf(codes.Unavailable, "the server is not ready: %s", resp.GetNotReadyReason())
			}
			return nil
		}),
	}
	client.register(cmd)
	return cmd
}

func (a *app) printStatus(server string, resp *rotavaultv1.GetServerStatusResponse) error {
	f := newFields(a.stdout)
	f.add("Server", server)
	f.add("Version", resp.GetVersion())
	revision := resp.GetVcsRevision()
	if revision != "" && resp.GetVcsModified() {
		revision += " (modified)"
	}
	f.addIf("Revision", revision)
	f.addIf("Go", resp.GetGoVersion())
	f.add("Started", a.when(resp.GetStartTime()))
	f.add("Store", resp.GetStoreBackend())
	f.add("Ready", strconv.FormatBool(resp.GetReady()))
	f.addIf("Not ready because", resp.GetNotReadyReason())
	for _, c := range resp.GetCredentialCounts() {
		f.add("Credentials "+enumText(c.GetStatus().String(), "CREDENTIAL_STATUS_"), strconv.FormatUint(c.GetCount(), 10))
	}
	if err := f.flush(); err != nil {
		return fmt.Errorf("print status: %w", err)
	}
	return nil
}
