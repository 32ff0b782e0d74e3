package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"

	rvclient "github.com/rotavault/rotavault/client"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// agentEnvPrefix names the agent's own settings: --sink is
// ROTAVAULT_AGENT_SINK. Its connection settings keep the client names
// (ROTAVAULT_ADDR…).
const agentEnvPrefix = envPrefix + "AGENT_"

// Timing of the agent's loop.
const (
	// agentRecheck is how often a credential waiting for reauthentication
	// is asked for again, in case its FAMILY_ACTIVATED notice was missed
	// (the watch's cursor fell out of the server's notice log).
	agentRecheck = time.Minute
	// agentMinWait keeps a loop from spinning on a token that is already
	// within its margin (clocks apart).
	agentMinWait = time.Second
	// agentFirstBackoff and agentMaxBackoff bound the waits after a failed
	// call (the Client already retried UNAVAILABLE within the call).
	agentFirstBackoff = time.Second
	agentMaxBackoff   = time.Minute
)

type agentSettings struct {
	sinks         []string
	sinkFormat    string
	exec          string
	stopSignal    string
	stopTimeout   time.Duration
	refreshBefore time.Duration
}

func newAgentCmd(a *app) *cobra.Command {
	var (
		client clientOptions
		s      agentSettings
	)
	cmd := &cobra.Command{
		Use:   "agent --sink ID=PATH... | --exec ID -- COMMAND [ARG...]",
		Short: "Keep access tokens in files, or run a command with one, for apps that cannot change",
		Long: `Serve apps that cannot call Rotavault themselves, as Vault Agent does.

Sinks (--sink ID=PATH, repeatable): the agent keeps the current access token
of credential ID in the file PATH — the token alone, or with --sink-format
json the object ` + "`rotavault token get --json`" + ` prints (accessToken,
tokenType, instanceUrl, expireTime, useUntil, generation, familyId,
fingerprint). The file is written to a temporary file in the same directory
with mode 0600 and renamed over PATH, so a reader sees the old content or
the new, never a part. It is rewritten --refresh-before (at most a quarter
of the token's lifetime) ahead of the token's use-until time — the server's
use_until, after which another replica may rotate the token at a provider
that kills the previous access token; the expiry when the server does not
say — when the family is replaced (FAMILY_ACTIVATED), and at start. When
the family is revoked (FAMILY_REVOKED), needs reauthentication, or the
token reached its use-until time without a new one, the file is REMOVED: a
missing file means "no usable token". Once someone reauthenticates
(rotavault reauth), the file comes back by itself.

Exec (--exec ID -- COMMAND...): the agent runs COMMAND with the token of
credential ID in its environment — ROTAVAULT_ACCESS_TOKEN,
ROTAVAULT_TOKEN_TYPE, ROTAVAULT_INSTANCE_URL, ROTAVAULT_TOKEN_EXPIRY and
ROTAVAULT_TOKEN_USE_UNTIL (RFC 3339), ROTAVAULT_TOKEN_GENERATION — and
none of the agent's own ROTAVAULT_* settings (server address, certificates,
bearer token file, agent settings), which are removed from the environment
it inherits; and, like Vault Agent's exec mode
(restart_on_secret_changes = "always"), RESTARTS it whenever the token
changes: it sends --exec-stop-signal (TERM), waits --exec-stop-timeout for
the command to exit (then kills it), and starts it again with the new
token. While the family is revoked the command is stopped; it starts again
once there is a token. When the command exits by itself, the agent exits
with its exit status.

The agent follows notices through a watch that resumes by itself across
broken connections and server restarts; at start it always asks for the
current token, so a notice missed while the agent was stopped changes
nothing. A credential that does not exist or that the caller may not read
stops the agent at start (exit status 3 or 4); later failures are retried
with backoff, keeping the last token while it is valid.

Settings come from flags, ROTAVAULT_AGENT_<FLAG> (--sink is
ROTAVAULT_AGENT_SINK, comma-separated) and the client connection variables
(ROTAVAULT_ADDR, ROTAVAULT_CACERT…). Run it under the consumer's own identity
(--tls-cert or --token-file).

Examples:
  rotavault agent --sink acme=/run/legacy/acme.token
  rotavault agent --sink acme=/run/a.json --sink billing=/run/b.json --sink-format json
  rotavault agent --exec acme -- ./legacy-report --daily`,
		Args: args(cobra.ArbitraryArgs),
		RunE: runE(func(cmd *cobra.Command, argv []string) error {
			plan, err := s.plan(cmd, argv)
			if err != nil {
				return err
			}
			return a.agent(cmd.Context(), &client, plan)
		}),
	}
	client.register(cmd)
	// --json only changes how a failure is reported; no variable should
	// switch it.
	bindEnv(cmd.PersistentFlags(), "json", "")
	cmd.PersistentFlags().Lookup("json").Usage = "report a failure as one JSON object on stderr (the log stays text)"
	fs := cmd.Flags()
	fs.StringSliceVar(&s.sinks, "sink", nil, "keep credential ID's access token in file PATH, as ID=PATH (repeatable)")
	fs.StringVar(&s.sinkFormat, "sink-format", "token", "what sink files hold: token (the access token alone) or json")
	fs.StringVar(&s.exec, "exec", "", "run the command after -- with credential ID's token in its environment, restarted when it changes")
	fs.StringVar(&s.stopSignal, "exec-stop-signal", "TERM", "signal that stops the command before a restart: TERM, INT, HUP, QUIT or KILL")
	fs.DurationVar(&s.stopTimeout, "exec-stop-timeout", 30*time.Second, "how long the command may take to exit after the stop signal before it is killed")
	fs.DurationVar(&s.refreshBefore, "refresh-before", 5*time.Minute, "replace a token this long before its use-until time (the server's use_until, else its expiry; at most a quarter of its lifetime)")
	markSettings(cmd, agentEnvPrefix)
	return cmd
}

// agentPlan is what one agent does, checked.
type agentPlan struct {
	// sinks maps a credential to the files holding its token.
	sinks         map[string][]string
	json          bool
	exec          *execSpec
	refreshBefore time.Duration
}

// credentials lists every credential the plan follows, once each.
func (p *agentPlan) credentials() []string {
	var ids []string
	seen := make(map[string]bool)
	add := func(id string) {
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	for id := range p.sinks {
		add(id)
	}
	if p.exec != nil {
		add(p.exec.credential)
	}
	return ids
}

func (s *agentSettings) plan(cmd *cobra.Command, argv []string) (*agentPlan, error) {
	p := &agentPlan{sinks: make(map[string][]string), refreshBefore: s.refreshBefore}
	switch s.sinkFormat {
	case "token":
	case "json":
		p.json = true
	default:
		return nil, usageErrorf("--sink-format %q: want token or json", s.sinkFormat)
	}
	if s.refreshBefore < 0 || s.refreshBefore > time.Hour {
		return nil, usageErrorf("--refresh-before %s: want between 0 and 1h", s.refreshBefore)
	}
	for _, sink := range s.sinks {
		id, path, ok := strings.Cut(sink, "=")
		if !ok || id == "" || path == "" {
			return nil, usageErrorf("--sink %q: want ID=PATH, e.g. acme=/run/legacy/acme.token", sink)
		}
		p.sinks[id] = append(p.sinks[id], path)
	}
	dash := cmd.ArgsLenAtDash()
	switch {
	case s.exec == "" && len(argv) > 0:
		return nil, usageErrorf("a command (%q) without --exec ID: give the credential whose token it gets", argv[0])
	case s.exec != "" && (dash < 0 || len(argv) == 0):
		return nil, usageErrorf("--exec %s needs the command after --, e.g. rotavault agent --exec %s -- ./app", s.exec, s.exec)
	case dash > 0:
		return nil, usageErrorf("unexpected arguments before --: %q", argv[:dash])
	case s.exec != "":
		sig, err := parseStopSignal(s.stopSignal)
		if err != nil {
			return nil, err
		}
		if s.stopTimeout <= 0 {
			return nil, usageErrorf("--exec-stop-timeout must be positive")
		}
		p.exec = &execSpec{credential: s.exec, argv: argv, stopSignal: sig, stopTimeout: s.stopTimeout}
	}
	if len(p.sinks) == 0 && p.exec == nil {
		return nil, usageErrorf("give at least one --sink ID=PATH or --exec ID -- COMMAND")
	}
	return p, nil
}

// agent runs plan until ctx ends, the command of --exec exits, or a
// credential cannot be followed from the start.
func (a *app) agent(ctx context.Context, client *clientOptions, plan *agentPlan) error {
	conn, err := client.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ids := plan.credentials()
	wake := make(map[string]chan struct{}, len(ids))
	for _, id := range ids {
		wake[id] = make(chan struct{}, 1)
	}
	var logMu sync.Mutex
	logf := func(format string, args ...any) {
		logMu.Lock()
		defer logMu.Unlock()
		fmt.Fprintf(a.stderr, "%s %s\n", a.now().UTC().Format(time.RFC3339), fmt.Sprintf(format, args...))
	}
	c, err := rvclient.New(conn,
		rvclient.WithRefreshMargin(plan.refreshBefore),
		rvclient.WithNoticeHandler(func(n *rotavaultv1.Notice) {
			ch := wake[n.GetCredentialId()]
			if ch == nil {
				return
			}
			logf("%s: %s (family %s, generation %d)", n.GetCredentialId(),
				strings.TrimPrefix(n.GetKind().String(), "NOTICE_KIND_"), n.GetFamilyId(), n.GetGeneration())
			select {
			case ch <- struct{}{}:
			default: // a wake-up is already pending
			}
		}))
	if err != nil {
		return err
	}
	defer c.Close()

	g, ctx := errgroup.WithContext(ctx)
	var sup *supervisor
	if plan.exec != nil {
		sup = newSupervisor(plan.exec, logf)
		g.Go(func() error { return sup.run(ctx) })
	}
	for _, id := range ids {
		sinks := make([]*fileSink, 0, len(plan.sinks[id]))
		for _, path := range plan.sinks[id] {
			sinks = append(sinks, &fileSink{path: path, json: plan.json})
		}
		f := &tokenFollower{
			client: c, id: id, wake: wake[id], timeout: client.timeout,
			margin: plan.refreshBefore, now: a.now, logf: logf,
			publish: func(tok *rvclient.Token) error {
				var errs []error
				for _, s := range sinks {
					errs = append(errs, s.publish(tok))
				}
				if sup != nil && sup.spec.credential == id {
					sup.update(tok)
				}
				return errors.Join(errs...)
			},
			describe: describeOutputs(sinks, sup != nil && sup.spec.credential == id),
		}
		g.Go(func() error { return f.run(ctx) })
	}
	logf("agent: following %s on %s", strings.Join(ids, ", "), client.server)
	err = g.Wait()
	if err != nil {
		return client.explain(err, "")
	}
	return nil
}

func describeOutputs(sinks []*fileSink, exec bool) string {
	var outs []string
	for _, s := range sinks {
		outs = append(outs, s.path)
	}
	if exec {
		outs = append(outs, "the command's environment")
	}
	return strings.Join(outs, ", ")
}

// tokenFollower keeps one credential's outputs current. Its run is the only
// caller of publish for that credential.
type tokenFollower struct {
	client  *rvclient.Client
	id      string
	wake    <-chan struct{}
	timeout time.Duration
	margin  time.Duration
	now     func() time.Time
	logf    func(format string, args ...any)
	// publish hands a new token to the outputs, or nil when there is no
	// usable one.
	publish  func(*rvclient.Token) error
	describe string
}

func (f *tokenFollower) run(ctx context.Context) error {
	var (
		cur *rvclient.Token
		// published is false until the outputs' state is known: a file
		// left by an earlier run must go if there is no token now.
		published bool
		failures  int
		wait      time.Duration
	)
	for first := true; ; first = false {
		callCtx, cancel := context.WithTimeout(ctx, f.timeout)
		tok, err := f.client.Token(callCtx, f.id, f.renewal(cur)...)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		switch {
		case err == nil:
			failures = 0
			if cur == nil || cur.Fingerprint != tok.Fingerprint {
				if perr := f.publish(&tok); perr != nil {
					f.logf("%s: %v", f.id, perr)
					failures++
					wait = backoffWait(failures)
					break
				}
				f.logf("%s: generation %d (fingerprint %s) in %s; use until %s, expires %s",
					f.id, tok.Generation, tok.Fingerprint, f.describe, tok.UsableUntil().UTC().Format(time.RFC3339), tok.Expiry.UTC().Format(time.RFC3339))
				cur, published = &tok, true
			}
			wait = max(tok.UsableUntil().Sub(f.now())-refreshMargin(f.margin, tok), agentMinWait)
		case errors.Is(err, rvclient.ErrReauthenticationRequired):
			failures = 0
			if cur != nil || !published {
				if perr := f.publish(nil); perr != nil {
					f.logf("%s: %v", f.id, perr)
					wait = backoffWait(1)
					break
				}
				f.logf("%s: reauthentication required: removed the token from %s; waiting for `rotavault reauth start|device|import %s`", f.id, f.describe, f.id)
				cur, published = nil, true
			}
			wait = agentRecheck
		default:
			if first && refusedAtStart(err) {
				return fmt.Errorf("agent: credential %s: %w", f.id, err)
			}
			failures++
			wait = backoffWait(failures)
			if cur != nil && !f.now().Before(cur.UsableUntil()) {
				if perr := f.publish(nil); perr == nil {
					cur = nil
				}
				f.logf("%s: the token reached its use-until time without a new one: removed it from %s", f.id, f.describe)
			} else if cur != nil {
				wait = max(min(wait, cur.UsableUntil().Sub(f.now())), agentMinWait)
			}
			f.logf("%s: %s; trying again in %s", f.id, brokenText(err), wait.Round(time.Millisecond))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-f.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// renewal is what the follower asks the Client for, given the token it
// holds: one that lasts past that token's use-until time by the margin.
// The Client serves its cached token up to use_until; at the agent's
// renewal moment (the margin before use_until) it must ask the server
// instead, and the server must refresh. Both judge by expiry, so the
// request is for the lifetime left at that moment: the gap between the
// token's use_until and its expiry, plus the margin, plus agentMinWait for
// the timer firing late. At most half the token's lifetime (the server
// refuses more than three quarters).
func (f *tokenFollower) renewal(cur *rvclient.Token) []rvclient.TokenOption {
	if cur == nil || !cur.UsableUntil().Before(cur.Expiry) {
		return nil
	}
	d := cur.Expiry.Sub(cur.UsableUntil()) + refreshMargin(f.margin, *cur) + agentMinWait
	if life := cur.Expiry.Sub(cur.IssuedAt); !cur.IssuedAt.IsZero() && life > 0 {
		d = min(d, life/2)
	}
	return []rvclient.TokenOption{rvclient.WithMinRemaining(d)}
}

// refreshMargin is when before its use-until time the agent replaces tok: the
// Client's own rule (WithRefreshMargin), so that at that moment the
// Client asks the server for a fresh token instead of serving its cache.
func refreshMargin(margin time.Duration, tok rvclient.Token) time.Duration {
	if life := tok.Expiry.Sub(tok.IssuedAt); !tok.IssuedAt.IsZero() && life > 0 {
		return min(margin, life/4)
	}
	return margin
}

func backoffWait(failures int) time.Duration {
	d := agentFirstBackoff
	for i := 1; i < failures && d < agentMaxBackoff; i++ {
		d *= 2
	}
	return min(d, agentMaxBackoff)
}

// refusedAtStart names the answers that mean the agent was set up wrong:
// retrying cannot change them, and an operator starting it wants to know.
func refusedAtStart(err error) bool {
	st, ok := grpcStatus(err)
	if !ok {
		return false
	}
	switch st.Code() {
	case codes.NotFound, codes.Unauthenticated, codes.PermissionDenied, codes.InvalidArgument:
		return true
	}
	return false
}
