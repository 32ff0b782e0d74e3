package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"

	rvclient "github.com/rotavault/rotavault/client"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

var errNoStart = errors.New("watch: the server did not start the stream within --timeout")

func newWatchCmd(a *app) *cobra.Command {
	var (
		client clientOptions
		cursor string
	)
	cmd := &cobra.Command{
		Use:   "watch [ID ...]",
		Short: "Print token-family notices as they happen",
		Long: `Stream notices about token families: FAMILY_REVOKED when a family dies
(theft detected by the provider, a lost rotation, an admin action) and
FAMILY_ACTIVATED when a new one is installed. Watch the given credentials,
or all of them. It runs until interrupted.

The first line gives the stream's starting cursor; every notice carries its
own. When the stream breaks — the server's --max-connection-age, a restart,
a replica going away — watch resumes by itself after the last cursor it
saw (every notice after it is replayed, none twice) and prints one line on
stderr once it is back. It stops by itself only when resuming cannot help:
the server refuses the caller (exit status 4), or the cursor is older than
the server's notice log, 10,000 notices (OUT_OF_RANGE, exit status 8):
resynchronise with ` + "`rotavault credentials list`" + `, then watch without --cursor.
To miss nothing across restarts of watch itself, remember the last cursor
you processed and start again with --cursor.

--timeout bounds only the wait for the first stream to start. With --json,
each message (each stream's start, then notices) is one JSON object per
line.

Examples:
  rotavault watch
  rotavault watch acme billing --cursor CURSOR
  rotavault watch --json | jq -c 'select(.notice.kind == "NOTICE_KIND_FAMILY_REVOKED")'`,
		Args:              args(cobra.ArbitraryArgs),
		ValidArgsFunction: a.completeCredentialIDs(&client, -1),
		RunE: runE(func(cmd *cobra.Command, ids []string) error {
			return a.watch(cmd.Context(), &client, ids, cursor)
		}),
	}
	client.register(cmd)
	cmd.Flags().StringVar(&cursor, "cursor", "", "resume after this cursor (from an earlier notice or start line)")
	return cmd
}

func (a *app) watch(parent context.Context, client *clientOptions, ids []string, cursor string) error {
	conn, err := client.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	// Only the first start is bounded: a wrong --server fails fast, while
	// a watch that ran once rides out restarts for as long as they last.
	startTimer := time.AfterFunc(client.timeout, func() { cancel(errNoStart) })
	defer startTimer.Stop()

	last := cursor
	var (
		started  bool
		brokenAt time.Time
		broke    error
	)
	err = rvclient.Watch(ctx, conn, rvclient.WatchConfig{
		CredentialIDs: ids,
		Cursor:        cursor,
		OnEvent: func(resp *rotavaultv1.WatchRevocationsResponse) {
			if client.json {
				_ = printJSON(a.stdout, resp)
			}
			switch ev := resp.GetEvent().(type) {
			case *rotavaultv1.WatchRevocationsResponse_Started:
				startTimer.Stop()
				last = ev.Started.GetCursor()
				switch {
				case client.json:
				case !started:
					what := "all credentials"
					if len(ids) > 0 {
						what = strings.Join(ids, ", ")
					}
					fmt.Fprintf(a.stdout, "watching %s; started at cursor %s (Ctrl-C stops)\n", what, last)
				case !brokenAt.IsZero():
					fmt.Fprintf(a.stderr, "reconnected after %s (%s); resumed after cursor %s\n",
						a.now().Sub(brokenAt).Round(time.Millisecond), brokenText(broke), last)
				}
				started, brokenAt = true, time.Time{}
			case *rotavaultv1.WatchRevocationsResponse_Notice:
				last = ev.Notice.GetCursor()
				if !client.json {
					a.printNotice(ev.Notice)
				}
			}
		},
		OnBroken: func(err error, _ time.Duration) {
			if brokenAt.IsZero() {
				brokenAt, broke = a.now(), err
			}
		},
	})
	if errors.Is(context.Cause(ctx), errNoStart) {
		return withHint(errNoStart, "is a Rotavault server running at %s?", client.server)
	}
	if parent.Err() != nil || err == nil {
		// Interrupted: the normal way to stop watching.
		if last != "" && !client.json {
			fmt.Fprintf(a.stderr, "stopped; resume with: rotavault watch %s--cursor %s (and the same connection flags)\n", idsArg(ids), last)
		}
		return nil
	}
	return watchEnded(client, err, ids, last)
}

// brokenText says why a stream broke, in one short phrase.
func brokenText(err error) string {
	msg := err.Error()
	if st, ok := grpcStatus(err); ok {
		msg = codeName(st.Code()) + ": " + userMessage(st)
	}
	return truncate(msg, maxErrorCell)
}

func idsArg(ids []string) string {
	if len(ids) == 0 {
		return ""
	}
	return strings.Join(ids, " ") + " "
}

// watchEnded explains why the watch stopped and how to go on.
func watchEnded(client *clientOptions, err error, ids []string, last string) error {
	if st, ok := grpcStatus(err); ok && (st.Code() == codes.OutOfRange || errorReason(st) == reasonCursorExpired) {
		return withHint(err, "notices after that cursor are no longer kept: resynchronise with `rotavault credentials list` (or `credentials show ID`), then watch again without --cursor")
	}
	if last != "" {
		if st, ok := grpcStatus(err); !ok || st.Code() != codes.InvalidArgument {
			return withHint(err, "resume without missing a notice: rotavault watch %s--cursor %s (and the same connection flags)", idsArg(ids), last)
		}
	}
	return client.explain(err, "")
}

func (a *app) printNotice(n *rotavaultv1.Notice) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s  %s  %s  family %s  generation %d",
		n.GetDetectTime().AsTime().Local().Format(time.RFC3339), strings.TrimPrefix(n.GetKind().String(), "NOTICE_KIND_"),
		n.GetCredentialId(), n.GetFamilyId(), n.GetGeneration())
	if n.GetReason() != rotavaultv1.RevocationReason_REVOCATION_REASON_UNSPECIFIED {
		fmt.Fprintf(&b, "  reason %s", strings.TrimPrefix(n.GetReason().String(), "REVOCATION_REASON_"))
	}
	if d := n.GetDetail(); d != "" {
		fmt.Fprintf(&b, "  %q", d)
	}
	fmt.Fprintf(&b, "  cursor %s\n", n.GetCursor())
	_, _ = io.WriteString(a.stdout, b.String())
}
