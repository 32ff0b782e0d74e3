package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

func newTokenCmd(a *app) *cobra.Command {
	var client clientOptions
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Get access tokens",
		Long: `Get access tokens from a Rotavault server. Rotavault never hands out
refresh tokens: it refreshes for you, once per rotation however many callers
ask at the same moment.`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRunE,
	}
	client.register(cmd)
	cmd.AddCommand(newTokenGetCmd(a, &client))
	return cmd
}

func newTokenGetCmd(a *app, client *clientOptions) *cobra.Command {
	var (
		minRemaining time.Duration
		rejectedGen  uint64
		rejectedFP   string
		showToken    bool
	)
	cmd := &cobra.Command{
		Use:   "get ID",
		Short: "Get an access token for a credential",
		Long: `Get an access token for the credential ID, refreshing it first if it is
about to expire (or has less than --min-remaining left).

By default only the token's metadata is printed: type, expiry, generation
(which grows by one with every refresh), family and fingerprint. Terminals
and CI logs get recorded, so the token itself is printed only with
--show-token, or in --json output for scripts.

THE --json OUTPUT INCLUDES THE ACCESS TOKEN (field accessToken): pipe it
into the program that needs it, never into a log. On a terminal a warning
says so on stderr.

"use until" (useUntil in --json) is when the token must stop being used
although it has not expired: from then on the server may rotate it at a
provider that kills the previous access token. Do not keep the token past
it; ask again.

When a resource server refuses a token Rotavault handed out (Salesforce:
401 INVALID_SESSION_ID), report it with --rejected-generation or
--rejected-fingerprint: Rotavault refreshes if that token is still its
current one and the provider does not vouch for it. A note on stderr (and
rejectedTokenOutcome in --json: STALE_REPORT, NO_CHANGE or TOKEN_REPLACED)
says what the report caused. Such reports are rate-limited per credential.

A credential whose family was revoked fails with FAILED_PRECONDITION, reason
REAUTHENTICATION_REQUIRED: see ` + "`rotavault reauth`" + `.

Examples:
  rotavault token get acme
  rotavault token get acme --min-remaining 5m
  rotavault token get acme --rejected-generation 7
  TOKEN=$(rotavault token get acme --json | jq -r .accessToken)`,
		Args:              args(cobra.ExactArgs(1)),
		ValidArgsFunction: a.completeCredentialIDs(client, 1),
		RunE: runE(func(cmd *cobra.Command, argv []string) error {
			id := argv[0]
			fs := cmd.Flags()
			if fs.Changed("rejected-generation") && fs.Changed("rejected-fingerprint") {
				return usageErrorf("give --rejected-generation or --rejected-fingerprint, not both")
			}
			if minRemaining < 0 {
				return usageErrorf("--min-remaining must not be negative")
			}
			req := &rotavaultv1.GetAccessTokenRequest{CredentialId: id}
			if minRemaining > 0 {
				req.MinRemainingLifetime = durationpb.New(minRemaining)
			}
			switch {
			case fs.Changed("rejected-generation"):
				req.RejectedToken = &rotavaultv1.RejectedToken{Token: &rotavaultv1.RejectedToken_Generation{Generation: rejectedGen}}
			case fs.Changed("rejected-fingerprint"):
				req.RejectedToken = &rotavaultv1.RejectedToken{Token: &rotavaultv1.RejectedToken_Fingerprint{Fingerprint: strings.ToLower(rejectedFP)}}
			}
			var resp *rotavaultv1.GetAccessTokenResponse
			err := client.call(cmd.Context(), func(ctx context.Context, conn *grpc.ClientConn) error {
				var err error
				resp, err = rotavaultv1.NewTokenVaultServiceClient(conn).GetAccessToken(ctx, req)
				return err
			})
			if err != nil {
				return client.explain(err, id)
			}
			if req.GetRejectedToken() != nil {
				a.reportNote(req, resp)
			}
			if client.json {
				if isTerminal(a.stdout) {
					fmt.Fprintln(a.stderr, "warning: this JSON includes the access token (accessToken); it stays in the terminal's scrollback")
				}
				return printJSON(a.stdout, resp)
			}
			f := newFields(a.stdout)
			f.add("credential", id)
			f.add("token type", resp.GetTokenType())
			f.add("expires", a.when(resp.GetExpireTime()))
			if resp.GetUseUntil() != nil {
				f.add("use until", a.when(resp.GetUseUntil()))
			}
			f.add("issued", a.when(resp.GetIssueTime()))
			f.add("generation", strconv.FormatUint(resp.GetGeneration(), 10))
			f.add("family", resp.GetFamilyId())
			f.add("fingerprint", resp.GetFingerprint())
			f.addIf("instance url", resp.GetInstanceUrl())
			f.addIf("scopes", strings.Join(resp.GetScopes(), " "))
			if showToken {
				f.add("access token", resp.GetAccessToken())
			}
			return f.flush()
		}),
	}
	fs := cmd.Flags()
	fs.DurationVar(&minRemaining, "min-remaining", 0, "least lifetime the token must have left (at most 3/4 of the credential's token lifetime)")
	fs.Uint64Var(&rejectedGen, "rejected-generation", 0, "report that the token of this generation was refused by a resource server")
	fs.StringVar(&rejectedFP, "rejected-fingerprint", "", "report that the token with this fingerprint (16 hex digits) was refused")
	fs.BoolVar(&showToken, "show-token", false, "print the access token itself (it ends up in terminal scrollback and logs)")
	return cmd
}

// reportNote tells the person what became of a rejected-token report, as
// the server's rejected_token_outcome says. Notes go to stderr; the exit
// status is 0 whatever the outcome, since a token was handed out.
func (a *app) reportNote(req *rotavaultv1.GetAccessTokenRequest, resp *rotavaultv1.GetAccessTokenResponse) {
	rt := req.GetRejectedToken()
	reported := "the token with fingerprint " + rt.GetFingerprint()
	if _, ok := rt.GetToken().(*rotavaultv1.RejectedToken_Generation); ok {
		reported = "generation " + strconv.FormatUint(rt.GetGeneration(), 10)
	}
	id := req.GetCredentialId()
	switch resp.GetRejectedTokenOutcome() {
	case rotavaultv1.RejectedTokenOutcome_REJECTED_TOKEN_OUTCOME_STALE_REPORT:
		fmt.Fprintf(a.stderr, "note: report ignored: %s is not %s's current token (generation %d is); here is the current one\n",
			reported, id, resp.GetGeneration())
	case rotavaultv1.RejectedTokenOutcome_REJECTED_TOKEN_OUTCOME_NO_CHANGE:
		fmt.Fprintf(a.stderr, "note: the report changed nothing: the provider still accepts %s, or another report on %s was acted on within the server's --rejected-token-interval; if the resource server keeps refusing it, check its configuration\n",
			reported, id)
	case rotavaultv1.RejectedTokenOutcome_REJECTED_TOKEN_OUTCOME_TOKEN_REPLACED:
		fmt.Fprintf(a.stderr, "note: %s was replaced: generation %d\n", reported, resp.GetGeneration())
	default:
		fmt.Fprintf(a.stderr, "note: the server does not say what became of the report (it predates rejected_token_outcome); generation %d is current\n", resp.GetGeneration())
	}
}
