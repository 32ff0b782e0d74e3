package main

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// completionTimeout bounds how long a shell waits for the server when the
// person presses Tab.
const completionTimeout = 2 * time.Second

// completeCredentialIDs completes credential ids from the server the
// command would talk to (its flags and ROTAVAULT_* connection variables),
// for commands taking up to max ids (-1: any number). It needs the right to
// list credentials (the admin role); without it, or without a server, the
// shell offers nothing rather than file names.
func (a *app) completeCredentialIDs(client *clientOptions, max int) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if max >= 0 && len(args) >= max {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		// Completion runs without the persistent pre-run hook that reads
		// the environment.
		if err := a.applyEnv(cmd); err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		ctx := cmd.Context()
		if ctx == nil {
			ctx = context.Background()
		}
		ctx, cancel := context.WithTimeout(ctx, completionTimeout)
		defer cancel()
		creds, err := listCredentials(ctx, client)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		var ids []cobra.Completion
		for _, c := range creds {
			if id := c.GetCredentialId(); strings.HasPrefix(id, toComplete) {
				ids = append(ids, cobra.CompletionWithDesc(id, statusText(c)))
			}
		}
		return ids, cobra.ShellCompDirectiveNoFileComp
	}
}
