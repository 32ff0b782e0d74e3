package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/rotavault/rotavault/boltstore"
	"github.com/rotavault/rotavault/broker"
	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/authflow"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/internal/node"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/server"
	"github.com/rotavault/rotavault/tracing"
)

const (
	devCredential     = "demo"
	devClientID       = "rotavault-dev-app"
	defaultDevDataDir = ".data/dev"
	devKeyFileName    = "store.key"
	// devURLFileName tells `dev theft` where the running dev simulator is.
	devURLFileName  = "dev-url"
	devCodeFileName = "authorization-code"
	// devTokenLifetime is short so that a newcomer sees a rotation within
	// a minute.
	devTokenLifetime = 30 * time.Second
	devTheftPath     = "/_dev/theft"
	devCallbackPath  = "/_dev/callback"
)

// devScopes are what Salesforce needs to issue a refresh token.
func devScopes() []string { return []string{"api", "refresh_token"} }

func newDevCmd(a *app) *cobra.Command {
	var (
		addr          string
		dataDir       string
		logs          logFlags
		issuanceFlush time.Duration
		httpListen    string
	)
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a server and a Salesforce simulator on loopback, with a credential ready",
		Long: `Run everything a newcomer needs on 127.0.0.1: a Rotavault server (like
` + "`serve`" + `, with reflection on) and a simulated Salesforce org that rotates
refresh tokens, revokes a whole token family when an old refresh token is
replayed, and issues access tokens that live 30 seconds, so rotations show
within a minute.

On first use it creates the data directory and a store key in it (mode
0600). Each run registers a connected app at the new simulator, points the
credential "demo" at it (creating it if needed) and imports a fresh refresh
token through the real import path. Other credentials you create are kept
between runs; the simulator's state is not.

There is no authentication: the server is plaintext on loopback, and every
caller is treated as the admin identity "dev-admin" (the audit trail records
dev-admin/peer:ADDR). Use ` + "`serve`" + ` with TLS and a --policy for anything else.

It prints what to try next. The short version, in a second terminal:

  rotavault watch                      # notices, live
  rotavault token get demo             # the token's metadata and generation
  sleep 30; rotavault token get demo   # the 30s token expired: refreshed, the generation grew
  rotavault dev theft                  # the provider revokes the family, as after a theft

Examples:
  rotavault dev
  rotavault dev --addr 127.0.0.1:7444 --data-dir /tmp/rv   # then: export ROTAVAULT_ADDR=127.0.0.1:7444`,
		Args: args(cobra.NoArgs),
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			log, err := logs.logger(a.stderr)
			if err != nil {
				return err
			}
			if issuanceFlush < minIssuanceFlush {
				return usageErrorf("--%s must be at least %s", issuanceFlushFlag, minIssuanceFlush)
			}
			return a.runDev(cmd.Context(), addr, httpListen, dataDir, issuanceFlush, log)
		}),
	}
	cmd.Flags().StringVar(&addr, "addr", defaultServer, "address of the server (loopback only)")
	cmd.Flags().StringVar(&httpListen, "http-listen", "127.0.0.1:0", "address of the HTTP endpoints, whose /oauth/callback finishes 'reauth start' flows (loopback only; port 0 picks one, printed at start)")
	cmd.PersistentFlags().StringVar(&dataDir, "data-dir", defaultDevDataDir, "directory of the dev store, its key and the audit trail")
	cmd.Flags().DurationVar(&issuanceFlush, issuanceFlushFlag, devIssuanceFlush, "how often the tokens handed out are summarised into the audit trail and new consumers added to the consumer catalog (rotavault consumers; known consumers' counts every ten intervals)")
	// Quiet by default: the banner with what to try next stays on screen
	// instead of scrolling away under a line per call.
	logs.human = true
	logs.register(cmd.Flags(), "warn")
	cmd.AddCommand(newDevTheftCmd(a, &dataDir))
	return cmd
}

// runDev starts the simulator, then the server, and installs the demo
// credential once the server is up. It returns when ctx ends.
func (a *app) runDev(ctx context.Context, addr, httpListen, dataDir string, issuanceFlush time.Duration, log *slog.Logger) error {
	if err := checkListenAddr(addr, false); err != nil {
		return err
	}
	if err := checkListenAddr(httpListen, false); err != nil {
		return usageErrorf("--http-listen: %v", err)
	}
	absDir, err := filepath.Abs(dataDir)
	if err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	if err := os.MkdirAll(absDir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	key, err := devKey(filepath.Join(absDir, devKeyFileName))
	if err != nil {
		return err
	}
	// Traced as serve is, by the OTEL_* variables.
	tr, err := tracing.FromEnv(ctx, a.env)
	if err != nil {
		return usageErrorf("%v", err)
	}
	log = tr.Logger(log)
	// Everything dev opens goes on the server's node, closed after the
	// server (the simulator outlives the broker's last call to it).
	n := node.New(node.Config{Logger: log, Tracing: tr})
	started := false
	defer func() {
		if !started { // runServer closes it otherwise
			_ = n.Close(context.WithoutCancel(ctx))
		}
	}()
	sim, err := providersim.Start(providersim.Config{SessionTimeout: devTokenLifetime, Logger: log})
	if err != nil {
		return err
	}
	n.OnClose("simulator", func(context.Context) error { return sim.Close() })

	// The simulator is reached through a front that adds the dev-only
	// endpoints; it is the credential's base URL.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	front := &devFront{sim: sim, dataDir: absDir, log: log}
	frontURL := "http://" + lis.Addr().String()
	n.ServeHTTP("dev simulator front", front.handler(), lis)

	secret, err := randomHex(24)
	if err != nil {
		return err
	}
	// Bound before the app is registered: its port is part of the server
	// callback's redirect URI.
	httpLis, err := net.Listen("tcp", httpListen)
	if err != nil {
		return withHint(fmt.Errorf("listen (HTTP): %w", err), "choose another --http-listen")
	}
	// runServer shuts it down; this covers failures before.
	n.OnClose("HTTP listener", func(context.Context) error { _ = httpLis.Close(); return nil })
	publicURL := "http://" + httpLis.Addr().String()
	sim.AddClient(providersim.Client{ID: devClientID, Secret: secret, RedirectURIs: []string{frontURL + devCallbackPath, publicURL + server.CallbackPath}, RequirePKCE: true})
	urlFile := filepath.Join(absDir, devURLFileName)
	wroteURL := false
	n.OnClose("dev URL file", func(context.Context) error {
		if wroteURL {
			_ = os.Remove(urlFile)
		}
		return nil
	})

	started = true
	return runServer(ctx, serverConfig{
		Node: n, Addr: addr, DataDir: absDir, Key: key, Reflection: true, Logger: log,
		HTTPListener: httpLis, PublicURL: publicURL,
		IssuanceFlushInterval: issuanceFlush,
		Ready: func(ctx context.Context, rs *runningServer) error {
			// Written only now that this process holds the store: a second
			// dev on the same directory must not redirect the first's.
			if err := writePrivateFile(urlFile, frontURL+"\n"); err != nil {
				return fmt.Errorf("write %s: %w", urlFile, err)
			}
			wroteURL = true
			front.broker.Store(rs.Broker)
			act, err := installDemo(ctx, rs.Broker, sim, frontURL, secret)
			if err != nil {
				return fmt.Errorf("install the demo credential: %w", err)
			}
			return a.printDevIntro(rs.Addr.String(), dataDir, absDir, frontURL, publicURL+server.CallbackPath, act)
		},
	})
}

// devKey loads the dev store key, creating it on first use.
func devKey(path string) (boltstore.Key, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return boltstore.GenerateKeyFile(path)
	}
	return boltstore.LoadKeyFile(path)
}

// installDemo points the demo credential at this run's simulator and
// imports a refresh token a user "authorized elsewhere", through the same
// path `reauth import` takes.
func installDemo(ctx context.Context, b *broker.Broker, sim *providersim.Server, baseURL, secret string) (authflow.Activation, error) {
	spec := credspec.Spec{
		ProviderKind:    credspec.ProviderSalesforce,
		BaseURL:         baseURL,
		ClientID:        devClientID,
		ClientSecret:    secret,
		Scopes:          devScopes(),
		AccessTokenLife: devTokenLifetime,
	}
	_, err := b.Credentials().Create(ctx, devCredential, spec)
	if errors.Is(err, brokererr.ErrAlreadyExists) {
		// Kept from an earlier run, whose simulator is gone.
		_, err = b.Credentials().Update(ctx, devCredential, []credspec.Field{
			credspec.FieldBaseURL, credspec.FieldTokenURL, credspec.FieldAuthorizeURL, credspec.FieldRevocationURL,
			credspec.FieldIntrospectionURL, credspec.FieldClientID, credspec.FieldClientSecret, credspec.FieldScopes,
			credspec.FieldAccessTokenLife, credspec.FieldReuseGrace,
		}, spec)
		if err != nil {
			err = fmt.Errorf("%w (delete it with `rotavault credentials delete %s --yes`, or use another --data-dir)", err, devCredential)
		}
	}
	if err != nil {
		return authflow.Activation{}, err
	}
	rt, err := sim.IssueRefreshToken(devClientID, spec.Scopes)
	if err != nil {
		return authflow.Activation{}, err
	}
	return b.ImportRefreshToken(ctx, devCredential, rt)
}

// devCommand spells how to run this binary in the printed hints: `go run`
// builds into a temporary go-build directory.
func devCommand() string {
	if exe, err := os.Executable(); err == nil && strings.Contains(exe, "go-build") {
		return "go run ./cmd/rotavault"
	}
	return "rotavault"
}

func (a *app) printDevIntro(boundAddr, dataDirFlag, absDir, frontURL, callbackURL string, act authflow.Activation) error {
	rv := devCommand()
	var b strings.Builder
	fmt.Fprintf(&b, "Rotavault dev is running; Ctrl-C stops it.\n\n")
	f := newFields(&b)
	f.add("  server", boundAddr+"  (plaintext gRPC on loopback, reflection on)")
	f.add("  simulator", frontURL+"  (a Salesforce org: refresh tokens rotate, a replayed one revokes its family, access tokens live 30s)")
	f.add("  callback", callbackURL+"  (the server's OAuth redirect endpoint)")
	f.add("  metrics", strings.TrimSuffix(callbackURL, server.CallbackPath)+"/metrics  (Prometheus; also /healthz and /readyz)")
	f.add("  data", absDir+"  (store key "+devKeyFileName+", audit trail "+auditFileName+")")
	f.add("  credential", fmt.Sprintf("%s  (family %s, generation %d)", devCredential, act.FamilyID, act.Generation))
	if err := f.flush(); err != nil {
		return err
	}
	fmt.Fprintf(&b, "\nTry, in another terminal:\n\n")
	if boundAddr != defaultServer {
		fmt.Fprintf(&b, "  export ROTAVAULT_ADDR=%s\n", boundAddr)
	}
	theft := rv + " dev theft"
	if dataDirFlag != defaultDevDataDir {
		theft += " --data-dir " + absDir
	}
	f = newFields(&b)
	for _, l := range [][2]string{
		{rv + " watch", "# notices, live: leave it running"},
		{rv + " token get demo", "# an access token's metadata (--show-token shows the token)"},
		{"sleep 30; " + rv + " token get demo", "# the 30s token expired meanwhile: refreshed, the generation grew"},
		{rv + " credentials show demo", "# status, generation, next refresh"},
		{theft, "# a thief replays an old refresh token: the provider revokes the family"},
	} {
		f.add("  "+l[0], l[1])
	}
	if err := f.flush(); err != nil {
		return err
	}
	codeFile := filepath.Join(absDir, devCodeFileName)
	fmt.Fprintf(&b, `
After a revocation, reauthenticate as a person would (the simulator approves at once):

  %s reauth start demo --wait
  curl -sL "AUTHORIZE_URL"    # or open it in a browser: the server's callback finishes the flow

or with a device flow: open the printed page, enter the code, press Allow:

  %s reauth device demo

or with your own redirect URI, completing by hand:

  %s reauth start demo --redirect-uri %s%s
  curl -sL "AUTHORIZE_URL"    # the code lands in %s
  %s reauth complete demo --state STATE --code-file %s

Logs follow on stderr: warnings and errors only (--log-level info shows every change, error and slow call; debug, every call).
`, rv, rv, rv, frontURL, devCallbackPath, codeFile, rv, codeFile)
	_, err := io.WriteString(a.stdout, b.String())
	return err
}

// devFront serves the simulator plus two loopback-only dev endpoints:
// theft (revoke a credential's family at the provider) and the OAuth
// callback of the dev app.
type devFront struct {
	sim     *providersim.Server
	dataDir string
	log     *slog.Logger
	// broker is set once the server is up.
	broker atomic.Pointer[broker.Broker]
}

// theftReport is the answer of the theft endpoint. It never holds a token.
type theftReport struct {
	CredentialID string `json:"credential_id"`
	FamilyID     string `json:"family_id"`
	Generation   uint64 `json:"generation"`
	Error        string `json:"error,omitempty"`
}

func (d *devFront) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+devTheftPath, d.theft)
	mux.HandleFunc("GET "+devCallbackPath, d.callback)
	mux.Handle("/", d.sim.Handler())
	return mux
}

// theft revokes the family of a credential's current access token, which
// is what Salesforce does when a thief replays a rotated refresh token.
// Rotavault is not told: it finds out by introspecting the refresh token
// (periodically, or when a consumer reports a rejected access token) or at
// its next refresh.
func (d *devFront) theft(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("credential")
	if id == "" {
		id = devCredential
	}
	rep := theftReport{CredentialID: id}
	b := d.broker.Load()
	if b == nil {
		rep.Error = "the server is still starting"
		writeJSON(w, http.StatusServiceUnavailable, rep)
		return
	}
	tok, err := b.GetAccessToken(r.Context(), access.Request{CredentialID: id})
	switch {
	case errors.Is(err, brokererr.ErrReauthRequired):
		rep.Error = "the credential has no live token family (already revoked?)"
		writeJSON(w, http.StatusConflict, rep)
		return
	case errors.Is(err, brokererr.ErrNotFound):
		rep.Error = "no such credential"
		writeJSON(w, http.StatusNotFound, rep)
		return
	case err != nil:
		d.log.Warn("dev theft: could not get an access token", "credential", id, "err", err)
		rep.Error = "could not get an access token; see the dev server's log"
		writeJSON(w, http.StatusBadGateway, rep)
		return
	}
	rep.FamilyID, rep.Generation = tok.FamilyID, tok.Generation
	if !d.sim.RevokeFamilyOf(tok.Token) {
		rep.Error = "the credential's family does not belong to this simulator"
		writeJSON(w, http.StatusConflict, rep)
		return
	}
	d.log.Info("dev theft: family revoked at the simulator", "credential", id, "family", tok.FamilyID, "generation", tok.Generation)
	writeJSON(w, http.StatusOK, rep)
}

// callback receives the dev app's authorization redirect and keeps the code
// in a file, so that `reauth complete --code-file` can read it without the
// code passing through a command line.
func (d *devFront) callback(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	q := r.URL.Query()
	if e := q.Get("error"); e != "" {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, "The provider refused the authorization: %s: %s\n", e, q.Get("error_description"))
		return
	}
	code, state := q.Get("code"), q.Get("state")
	if code == "" {
		http.Error(w, "no code in the redirect", http.StatusBadRequest)
		return
	}
	path := filepath.Join(d.dataDir, devCodeFileName)
	if err := writePrivateFile(path, code+"\n"); err != nil {
		d.log.Error("dev callback: could not save the authorization code", "err", err)
		http.Error(w, "could not save the code; see the dev server's log", http.StatusInternalServerError)
		return
	}
	fmt.Fprintf(w, "Authorization code received and saved in %s (single use, valid 15 minutes).\n\nFinish with:\n\n  %s reauth complete demo --state %s --code-file %s\n",
		path, devCommand(), state, path)
}

// writePrivateFile replaces path with a file only its owner may read.
func writePrivateFile(path, content string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.WriteString(f, content); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random: %w", err)
	}
	return hex.EncodeToString(b), nil
}

func newDevTheftCmd(a *app, dataDir *string) *cobra.Command {
	var devURL string
	cmd := &cobra.Command{
		Use:   "theft [ID]",
		Short: "Make the dev simulator revoke a credential's family, as a stolen token's replay would",
		Long: `Simulate a theft against a running ` + "`rotavault dev`" + `: at Salesforce, a thief
who replays a refresh token that was already rotated away gets the whole
token family revoked, ours included. This asks the dev simulator to do
exactly that to the credential's current family (default "demo").

Rotavault is not told. It finds out on its own within half a minute (a
token in use is refreshed ahead of its expiry; the simulator's refresh
tokens are also introspected periodically), or at once when a consumer
reports the token rejected: then it asks the simulator's introspection
endpoint about the refresh token and learns of the revocation without
presenting it. Either
way the credential turns REVOKED, ` + "`watch`" + ` prints a FAMILY_REVOKED notice
and token requests fail with REAUTHENTICATION_REQUIRED.

The dev simulator's URL is read from DATA_DIR/dev-url, written by the
running ` + "`rotavault dev`" + `; --dev-url overrides it.

Examples:
  rotavault dev theft
  rotavault dev theft demo --dev-url http://127.0.0.1:41234`,
		Args: args(cobra.MaximumNArgs(1)),
		RunE: runE(func(cmd *cobra.Command, argv []string) error {
			id := devCredential
			if len(argv) == 1 {
				id = argv[0]
			}
			base, err := resolveDevURL(devURL, *dataDir)
			if err != nil {
				return err
			}
			rep, err := postTheft(cmd.Context(), base, id)
			if err != nil {
				return err
			}
			rv := devCommand()
			_, err = fmt.Fprintf(a.stdout, `The provider revoked the token family of %s (family %s, generation %d),
as Salesforce does when a thief replays a refresh token that was already rotated away.

Rotavault finds out about %s within half a minute on its own, or now, as a
consumer whose API call was refused would report it:

  %s token get %s --rejected-generation %d    # REAUTHENTICATION_REQUIRED; watch prints FAMILY_REVOKED

Recover by reauthenticating (see the dev output), or restart %s dev.
`, rep.CredentialID, rep.FamilyID, rep.Generation, rep.CredentialID, rv, rep.CredentialID, rep.Generation, rv)
			return err
		}),
	}
	cmd.Flags().StringVar(&devURL, "dev-url", "", "URL of the dev simulator (default: read from DATA_DIR/dev-url)")
	return cmd
}

// resolveDevURL returns the dev simulator's base URL, refusing anything off
// loopback: this endpoint exists only on a developer's machine.
func resolveDevURL(flagURL, dataDir string) (string, error) {
	raw := flagURL
	if raw == "" {
		path := filepath.Join(dataDir, devURLFileName)
		b, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("no running `rotavault dev` found (%s is missing): start it, or pass --dev-url or --data-dir", path)
		}
		if err != nil {
			return "", err
		}
		raw = strings.TrimSpace(string(b))
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return "", usageErrorf("--dev-url %q: want http://127.0.0.1:PORT", raw)
	}
	if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
		return "", usageErrorf("--dev-url %q: the dev simulator is on loopback only", raw)
	}
	return strings.TrimRight(raw, "/"), nil
}

func postTheft(ctx context.Context, base, id string) (theftReport, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+devTheftPath+"?credential="+url.QueryEscape(id), nil)
	if err != nil {
		return theftReport{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return theftReport{}, fmt.Errorf("reach the dev simulator (is `rotavault dev` running?): %w", err)
	}
	defer resp.Body.Close()
	var rep theftReport
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&rep); err != nil {
		return theftReport{}, fmt.Errorf("dev simulator answered %s without a report", resp.Status)
	}
	if resp.StatusCode != http.StatusOK {
		return theftReport{}, fmt.Errorf("dev simulator: %s: %s", id, rep.Error)
	}
	return rep, nil
}
