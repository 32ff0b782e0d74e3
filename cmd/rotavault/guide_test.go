package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rotavault/rotavault/boltstore"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/internal/syncbuf"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/server"
)

// guideHeading is the README section TestGuide runs.
const guideHeading = "## Activating refresh token rotation, step by step"

// The guide's consumers, each with a bearer token of its own, as the guide
// asks: the operator (admin), a service and a legacy app's wrapper.
const (
	guideOperator = "ops"
	guideConsumer = "billing-sync"
	guideLegacy   = "legacy-report"
)

// TestGuide runs the README's activation guide, step by step, against a
// server with a policy and bearer-token identities and the Salesforce
// simulator: every command of the guide's sh blocks, in order, through the
// in-process CLI, with its $VARIABLES filled in. The test plays the parts
// that are not commands — the person approving logins, the consumers at work
// during the business cycle, a thief — and checks at each step what the
// person following the guide would look at.
func TestGuide(t *testing.T) {
	steps := readGuide(t, filepath.Join("..", "..", "README.md"), guideHeading)
	if len(steps) != 7 {
		t.Fatalf("the guide has %d steps, want 7 (scopes, holder, catalog, rotation-aware apps, legacy apps, activation, recovery)", len(steps))
	}
	g := setupGuideTest(t)
	for _, step := range steps {
		t.Logf("step %d: %s", step.number, step.title)
		g.step = step.number
		if before := g.beforeStep[step.number]; before != nil {
			before()
		}
		for _, line := range step.commands {
			g.exec(line)
		}
		if after := g.afterStep[step.number]; after != nil {
			after()
		}
		g.checkSamples(step)
	}
}

// checkSamples checks that each sample output line of the step (its text
// blocks) is a line that a command, a watch or a consumer printed.
func (g *guideTest) checkSamples(step guideStep) {
	g.t.Helper()
	seen := slices.Clone(g.seen[step.number])
	for _, r := range g.outputs(step.number) {
		seen = append(seen, r.res.stdout, r.res.stderr)
	}
	for _, b := range g.bgs {
		seen = append(seen, b.bg.stdout.String(), b.bg.stderr.String())
	}
	all := strings.Join(seen, "\n")
	for _, sample := range step.samples {
		if re := sampleRE(sample); !re.MatchString(all) {
			g.t.Errorf("step %d: nothing printed matches the guide's sample %q (as %s):\n%s", step.number, sample, re, all)
		}
	}
}

// guideTest is the world the guide runs in, and what its commands printed.
type guideTest struct {
	t    *testing.T
	c    *cli // the operator's shell: its transcript is checked for secrets
	sim  *providersim.Server
	node *guideNode
	vars map[string]string
	// tokenFiles maps identities to their bearer-token files.
	tokenFiles map[string]string
	secrets    []string

	step int
	ran  []guideRan
	// seen holds, per step, what the test's own parts (the consumers, the
	// thief) saw, for checkSamples.
	seen       map[int][]string
	bgs        []guideBackground
	beforeStep map[int]func()
	afterStep  map[int]func()
}

// guideRan is a command the guide ran, and its result.
type guideRan struct {
	step int
	args []string // without "rotavault"
	res  result
}

type guideBackground struct {
	args []string
	bg   *background
}

func setupGuideTest(t *testing.T) *guideTest {
	sim, err := providersim.Start(providersim.Config{DeviceInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	dir := t.TempDir()
	g := &guideTest{t: t, sim: sim, c: newCLI(t, nil), tokenFiles: map[string]string{}, seen: map[int][]string{}}
	// The Salesforce connected app, with the server's callback as its
	// callback URL.
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	publicURL := "http://" + httpLis.Addr().String()
	sim.AddClient(providersim.Client{ID: simClientID, Secret: simClientSecret, RedirectURIs: []string{publicURL + server.CallbackPath}, RequirePKCE: true})

	// Identities and the policy of "Who may ask".
	var tokens strings.Builder
	for _, id := range []string{guideOperator, guideConsumer, guideLegacy} {
		tok := "guide-bearer-" + id + "-" + rand.Text()
		g.tokenFiles[id] = writeGuideFile(t, dir, id+".token", tok)
		fmt.Fprintf(&tokens, "%s %s\n", id, server.TokenDigest(tok))
		g.secrets = append(g.secrets, tok)
	}
	tokensFile := writeGuideFile(t, dir, "tokens", tokens.String())
	policyFile := writeGuideFile(t, dir, "policy.json", `{"rules": [
		{"identity": "`+guideOperator+`", "role": "admin"},
		{"identity": "`+guideConsumer+`", "role": "consumer", "credentials": ["acme"]},
		{"identity": "`+guideLegacy+`", "role": "consumer", "credentials": ["acme"]}
	]}`)

	dataDir := filepath.Join(dir, "data")
	keyFile, _ := newKeyFile(t, dir, "store.key")
	key, err := boltstore.LoadKeyFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	g.node = &guideNode{t: t, trans: g.c.trans, httpAddr: httpLis.Addr().String(), cfg: serverConfig{
		Addr: "127.0.0.1:0", DataDir: dataDir, Key: key,
		BearerTokensFile: tokensFile, PolicyFile: policyFile,
		PublicURL: publicURL, ShutdownTimeout: 5 * time.Second,
		// A consumer's rejected-token report in step 4 must not hold back
		// the one that finds the theft in step 7, 30 s later in real life.
		BrokerOptions: []option.Option{option.WithRejectionInterval(0)},
	}}
	g.node.start(httpLis)
	t.Cleanup(g.node.stop)
	g.c.env = map[string]string{"ROTAVAULT_ADDR": g.node.addr, "ROTAVAULT_TOKEN_FILE": g.tokenFiles[guideOperator]}

	refreshToken := issueRefreshToken(t, sim)
	const oauth2Secret = "guide-oauth2-client-secret-51c7"
	g.secrets = append(g.secrets, simClientSecret, oauth2Secret, refreshToken)
	g.vars = map[string]string{
		"SALESFORCE_URL":            sim.URL(),
		"CLIENT_ID":                 simClientID,
		"CLIENT_SECRET_FILE":        writeGuideFile(t, dir, "acme.secret", simClientSecret+"\n"),
		"ISSUER":                    sim.URL(),
		"TOKEN_URL":                 sim.URL() + "/services/oauth2/token",
		"AUTHORIZE_URL":             sim.URL() + "/services/oauth2/authorize",
		"DEVICE_AUTHORIZATION_URL":  sim.URL() + providersim.DeviceAuthorizationPath,
		"REVOCATION_URL":            sim.URL() + "/services/oauth2/revoke",
		"INTROSPECTION_URL":         sim.URL() + "/services/oauth2/introspect",
		"OAUTH2_CLIENT_ID":          "0oa-guide-client",
		"OAUTH2_CLIENT_SECRET_FILE": writeGuideFile(t, dir, "okta.secret", oauth2Secret+"\n"),
		"REFRESH_TOKEN_FILE":        writeGuideFile(t, dir, "acme.refresh-token", refreshToken+"\n"),
		"CONSUMER_TOKEN_FILE":       g.tokenFiles[guideConsumer],
		"LEGACY_TOKEN_FILE":         g.tokenFiles[guideLegacy],
		"LEGACY_APP_TOKEN":          filepath.Join(dir, "legacy-app.token.json"),
		"DATA_DIR":                  dataDir,
		"STORE_KEY_FILE":            keyFile,
		// GENERATION is set from the last token get's output.
	}
	// No token, secret, code or verifier in any output or log — but the
	// access tokens that --json prints by design (see execPrintsToken).
	t.Cleanup(func() { g.c.trans.assertNoSecrets(t, append(sim.Secrets(), g.secrets...)...) })

	g.beforeStep = map[int]func(){7: g.theft}
	g.afterStep = map[int]func(){
		1: g.checkScopes,
		2: g.checkOnlyHolder,
		3: g.checkCatalog,
		4: g.checkRotationAware,
		5: g.checkLegacy,
		6: g.checkActivated,
		7: g.checkRecovered,
	}
	return g
}

// exec runs one command line of the guide, playing the person where the
// command waits for one.
func (g *guideTest) exec(line string) {
	t := g.t
	t.Helper()
	words, bg, err := shellWords(line, func(name string) (string, bool) {
		v, ok := g.vars[name]
		return v, ok
	})
	if err != nil {
		t.Fatalf("step %d: %q: %v", g.step, line, err)
	}
	args := words[1:] // after "rotavault"
	t.Logf("  $ %s", line)
	var res result
	switch {
	case bg:
		b := g.c.start(nil, args...)
		switch {
		case hasPrefix(args, "watch"):
			g.waitOrExit(line, b, b.stdout, "started at cursor")
		case hasPrefix(args, "agent"):
			g.waitOrExit(line, b, b.stderr, "acme: generation ")
		default:
			t.Fatalf("step %d: %q: only watch and agent run in the background in the guide", g.step, line)
		}
		g.bgs = append(g.bgs, guideBackground{args: args, bg: b})
		return
	case hasPrefix(args, "reauth", "device"):
		// The person opens the URL, enters the code and approves.
		b := g.c.start(nil, args...)
		g.waitOrExit(line, b, b.stderr, "Waiting stops with Ctrl-C")
		if err := g.sim.ApproveDevice(b.userCode(t)); err != nil {
			t.Fatal(err)
		}
		res = result{code: b.exited(t), stdout: b.stdout.String(), stderr: b.stderr.String()}
	case hasPrefix(args, "reauth", "start") && slices.Contains(args, "--wait"):
		// The person's browser: the simulator approves and redirects to
		// the server's callback.
		b := g.c.start(nil, args...)
		out := g.waitOrExit(line, b, b.stdout, "redirect")
		m := regexp.MustCompile(`(?m)^\s+(http://\S+/services/oauth2/authorize\S+)$`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("step %d: %q printed no authorize URL:\n%s", g.step, line, out)
		}
		resp, err := http.Get(m[1])
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("step %d: the browser ended with %s", g.step, resp.Status)
		}
		res = result{code: b.exited(t), stdout: b.stdout.String(), stderr: b.stderr.String()}
	case hasPrefix(args, "token", "get") && slices.Contains(args, "--json"):
		res = g.execPrintsToken(args)
	case hasPrefix(args, "consumers"):
		// The catalog shows what servers flushed: they do every
		// --issuance-flush-interval and when they stop.
		g.businessCycle()
		res = g.c.run("", args...)
	case hasPrefix(args, "audit", "verify", "--online"):
		g.waitForWatches()
		res = g.c.run("", args...)
	case hasPrefix(args, "audit", "verify"):
		// Offline: the server holds the store's lock.
		g.waitForWatches()
		g.node.stop()
		res = g.c.run("", args...)
	default:
		res = g.c.run("", args...)
	}
	if res.code != exitOK {
		t.Fatalf("step %d: %q exited %d\nstdout:\n%s\nstderr:\n%s", g.step, line, res.code, res.stdout, res.stderr)
	}
	if hasPrefix(args, "token", "get") {
		g.vars["GENERATION"] = tokenGeneration(t, res.stdout)
	}
	g.ran = append(g.ran, guideRan{step: g.step, args: args, res: res})
}

// waitOrExit waits until the command running in b printed marker to out,
// and returns out; it fails when the command ends first.
func (g *guideTest) waitOrExit(line string, b *background, out *syncbuf.Buffer, marker string) string {
	g.t.Helper()
	deadline := time.Now().Add(awaitDeadline)
	for !strings.Contains(out.String(), marker) {
		select {
		case code := <-b.done:
			close(b.done) // stop, at cleanup, then finds it ended
			g.t.Fatalf("step %d: %q exited %d\nstdout:\n%s\nstderr:\n%s", g.step, line, code, b.stdout.String(), b.stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("step %d: %q printed no %q within %s\nstdout:\n%s\nstderr:\n%s", g.step, line, marker, awaitDeadline, b.stdout.String(), b.stderr.String())
		}
	}
	return out.String()
}

// execPrintsToken runs a token get --json, which prints the access token by
// design, outside the transcript; the token must be live at the provider,
// and the output, the token cut out, joins the transcript.
func (g *guideTest) execPrintsToken(args []string) result {
	t := g.t
	t.Helper()
	shown := newCLI(t, g.c.env)
	res := shown.run("", args...)
	if res.code != exitOK {
		return res
	}
	tok := parseToken(t, res.stdout)
	if !g.sim.AccessTokenActive(tok.GetAccessToken()) {
		t.Fatalf("step %d: token get %s printed a token the provider does not accept", g.step, strings.Join(args, " "))
	}
	cut := &syncbuf.Buffer{}
	_, _ = cut.Write([]byte(strings.ReplaceAll(res.stdout+res.stderr, tok.GetAccessToken(), "ACCESS-TOKEN")))
	g.c.trans.add(cut)
	return res
}

var generationRE = regexp.MustCompile(`(?m)^generation\s+(\d+)$|"generation":\s*"(\d+)"`)

// tokenGeneration reads the generation from token get's output.
func tokenGeneration(t *testing.T, out string) string {
	t.Helper()
	m := generationRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("token get showed no generation:\n%s", out)
	}
	return m[1] + m[2]
}

// output returns the result of the step's last command starting with
// prefix; it fails when the step ran none: the check needs that command in
// the guide.
func (g *guideTest) output(step int, prefix ...string) result {
	g.t.Helper()
	for _, r := range slices.Backward(g.ran) {
		if r.step == step && hasPrefix(r.args, prefix...) {
			return r.res
		}
	}
	g.t.Fatalf("step %d of the guide shows no `rotavault %s`", step, strings.Join(prefix, " "))
	return result{}
}

// outputs returns the results of the step's commands starting with prefix.
func (g *guideTest) outputs(step int, prefix ...string) []guideRan {
	var rs []guideRan
	for _, r := range g.ran {
		if r.step == step && hasPrefix(r.args, prefix...) {
			rs = append(rs, r)
		}
	}
	return rs
}

// watch returns the output of the background watch whose arguments are
// exactly args.
func (g *guideTest) watch(args ...string) *background {
	g.t.Helper()
	for _, b := range g.bgs {
		if slices.Equal(b.args, args) {
			return b.bg
		}
	}
	g.t.Fatalf("the guide starts no `rotavault %s &`", strings.Join(args, " "))
	return nil
}

func (g *guideTest) expectMatch(what, out string, patterns ...string) {
	g.t.Helper()
	for _, p := range patterns {
		if !regexp.MustCompile(p).MatchString(out) {
			g.t.Errorf("step %d: %s does not match %s:\n%s", g.step, what, p, out)
		}
	}
}

// Step 1: the credential asks for a refresh token.
func (g *guideTest) checkScopes() {
	g.expectMatch("credentials show acme", g.output(1, "credentials", "show", "acme").stdout,
		`(?m)^scopes\s+api refresh_token$`, `(?m)^client secret\s+set$`)
	g.expectMatch("credentials show okta-app", g.output(1, "credentials", "show", "okta-app").stdout,
		`(?m)^scopes\s+.*\boffline_access\b`, `(?m)^provider\s+oauth2$`,
		`(?m)^metadata\s+http://\S+/\.well-known/openid-configuration, fetched `, `(?m)^\s+token url\s+http://\S+/services/oauth2/token$`,
		`(?m)^\s+auth methods\s+client_secret_post client_secret_basic private_key_jwt$`,
		`(?m)^early detection\s+inactive: no active token family$`)
}

// Step 2: import, device flow and browser flow each installed a family;
// Rotavault holds the last one.
func (g *guideTest) checkOnlyHolder() {
	for _, kind := range []string{"import", "device", "start"} {
		rs := g.outputs(2, "reauth", kind)
		if len(rs) == 0 {
			g.t.Errorf("step 2 of the guide shows no `rotavault reauth %s`", kind)
		}
		for _, r := range rs {
			g.expectMatch("reauth "+kind, r.res.stdout, `acme: new token family active`)
		}
	}
	if got := showCredential(g.t, g.c, "acme"); got.GetStatus().String() != "CREDENTIAL_STATUS_ACTIVE" {
		g.t.Errorf("acme after step 2: %v", got)
	}
}

// businessCycle plays the consumers at work — the service and the legacy
// app's wrapper, each under its own identity — and then a server restart,
// which flushes their counts into the catalog at once.
func (g *guideTest) businessCycle() {
	for range 3 {
		g.c.run("", "token", "get", "acme", "--token-file", g.tokenFiles[guideConsumer]).expect(g.t, exitOK)
	}
	g.c.run("", "token", "get", "acme", "--token-file", g.tokenFiles[guideLegacy]).expect(g.t, exitOK)
	g.node.stop()
	g.node.start(nil)
	g.c.env["ROTAVAULT_ADDR"] = g.node.addr
}

// Step 3: the catalog names every consumer, and nobody else.
func (g *guideTest) checkCatalog() {
	out := g.output(3, "consumers").stdout
	g.expectMatch("consumers", out,
		`(?m)^acme\s+`+guideConsumer+`\s+3\s`,
		`(?m)^acme\s+`+guideLegacy+`\s+1\s`)
	if strings.Contains(out, guideOperator) {
		g.t.Errorf("the catalog lists the operator, who took no token:\n%s", out)
	}
}

// Step 4: the consumer gets tokens under its identity; its report of a
// token the provider still vouches for changes nothing; its watch runs.
func (g *guideTest) checkRotationAware() {
	gets := g.outputs(4, "token", "get", "acme")
	var plain, report *result
	for i := range gets {
		if slices.Contains(gets[i].args, "--rejected-generation") {
			report = &gets[i].res
		} else if report == nil {
			plain = &gets[i].res
		}
	}
	if plain == nil || report == nil {
		g.t.Fatalf("step 4 of the guide should show a token get, then a token get --rejected-generation")
	}
	if a, b := tokenGeneration(g.t, plain.stdout), tokenGeneration(g.t, report.stdout); a != b {
		g.t.Errorf("a report of a token the provider vouches for refreshed it: generation %s, then %s", a, b)
	}
	g.watch("watch", "acme", "--token-file", g.tokenFiles[guideConsumer])
}

// Step 5: the agent, under the legacy app's identity, keeps a token the
// provider accepts in its file, readable by its owner only (the wrapper's
// token get was checked live at the provider when it ran).
func (g *guideTest) checkLegacy() {
	path := g.vars["LEGACY_APP_TOKEN"]
	tok := parseToken(g.t, string(readFile(g.t, path)))
	if !g.sim.AccessTokenActive(tok.GetAccessToken()) || tok.GetInstanceUrl() == "" {
		g.t.Errorf("step 5: the agent's file holds no live token with its instance URL")
	}
	if mode := fileMode(g.t, path); mode != 0o600 {
		g.t.Errorf("step 5: the agent's file has mode %o, want 600", mode)
	}
}

// Step 6: acme is active with no error and the provider rotates; the
// operator's watch runs.
func (g *guideTest) checkActivated() {
	g.expectMatch("credentials list", g.output(6, "credentials", "list").stdout,
		`(?m)^acme\s+active\s+\d+\s.*\s-$`)
	g.expectMatch("credentials update okta-app", g.output(6, "credentials", "update", "okta-app").stdout,
		`(?m)^reuse grace\s+30s$`)
	// The family the guide installed last has not been refreshed yet, so
	// show has no rotation line here; integration's
	// TestCredentialShowsWhetherTheProviderRotates checks both answers.
	g.expectMatch("credentials show acme", g.output(6, "credentials", "show", "acme").stdout, `(?m)^status\s+active$`)
	g.watch("watch")
}

// theft plays, before step 7, a holder the catalog missed replaying an old
// refresh token: the provider revokes the family; a consumer's next API call
// is refused and it reports the token, as step 4 says; both watches see the
// family die.
func (g *guideTest) theft() {
	t := g.t
	shown := newCLI(t, g.c.env)
	tok := parseToken(t, shown.run("", "token", "get", "acme", "--json").expect(t, exitOK).stdout)
	if !g.sim.RevokeFamilyOf(tok.GetAccessToken()) {
		t.Fatal("the simulator did not know acme's family")
	}
	r := g.c.run("", "token", "get", "acme", "--token-file", g.tokenFiles[guideConsumer],
		"--rejected-generation", fmt.Sprint(tok.GetGeneration())).expect(t, exitReauthRequired)
	if !strings.Contains(r.stderr, "reason REAUTHENTICATION_REQUIRED") {
		t.Errorf("the consumer's report after the theft: %s", r.stderr)
	}
	g.seen[7] = append(g.seen[7], r.stderr)
	for _, w := range g.watches() {
		waitCount(t, w, "FAMILY_REVOKED  acme", 1)
	}
}

func (g *guideTest) watches() []*background {
	return []*background{g.watch("watch", "acme", "--token-file", g.tokenFiles[guideConsumer]), g.watch("watch")}
}

// waitForWatches waits until the watches have seen step 7's notices: the
// theft, the reauthentication, the deliberate revocation and the new family.
func (g *guideTest) waitForWatches() {
	for _, w := range g.watches() {
		waitCount(g.t, w, "FAMILY_REVOKED  acme", 2)
		waitCount(g.t, w, "FAMILY_ACTIVATED  acme", 2)
	}
}

// Step 7: the revocation showed, reauthentication restored service, the
// deliberate revocation reached watchers and the audit trail, which is
// intact.
func (g *guideTest) checkRecovered() {
	t := g.t
	g.expectMatch("credentials show acme after the theft", g.output(7, "credentials", "show", "acme").stdout,
		`(?m)^status\s+revoked: revoked_at_provider$`)
	tok := g.output(7, "token", "get", "acme").stdout
	if !strings.Contains(tok, "generation") {
		t.Errorf("token get after reauthenticating: %s", tok)
	}
	for _, w := range g.bgs {
		if hasPrefix(w.args, "agent") {
			// The legacy app's file went away with the family and came
			// back with the new one.
			w.bg.stderr.WaitFor(t, "acme: reauthentication required: removed the token", awaitDeadline)
			poll.UntilSeen(t, awaitDeadline, "the legacy app's file after reauthentication", func() (bool, string) {
				b, err := os.ReadFile(g.vars["LEGACY_APP_TOKEN"])
				if err != nil {
					return false, err.Error()
				}
				return g.sim.AccessTokenActive(parseToken(t, string(b)).GetAccessToken()), "a token the provider refuses"
			})
			continue
		}
		out := w.bg.stdout.String()
		want := []string{
			`FAMILY_REVOKED  acme .* reason REVOKED_AT_PROVIDER`,
			`FAMILY_ACTIVATED  acme`,
			`FAMILY_REVOKED  acme .* reason ADMIN_REVOKED`,
			`FAMILY_ACTIVATED  acme`,
		}
		rest := out
		for _, p := range want {
			loc := regexp.MustCompile(p).FindStringIndex(rest)
			if loc == nil {
				t.Errorf("watch %s: no %q after the earlier notices:\n%s", strings.Join(w.args, " "), p, out)
				break
			}
			rest = rest[loc[1]:]
		}
	}
	g.output(7, "credentials", "revoke", "acme")
	reason := flagValue(t, g.ran, "credentials", "revoke", "--reason")
	audit, err := os.ReadFile(filepath.Join(g.vars["DATA_DIR"], "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(audit), reason) {
		t.Errorf("the audit trail does not record the revocation's reason %q", reason)
	}
	g.expectMatch("audit verify --online", g.output(7, "audit", "verify", "--online").stdout, `^OK: the server's audit trail: .*chain intact`)
	g.expectMatch("audit verify", g.output(7, "audit", "verify").stdout, `^OK: .*chain intact`)
}

// flagValue returns the value of flag in the last command starting with
// prefix.
func flagValue(t *testing.T, ran []guideRan, prefix0, prefix1, flag string) string {
	t.Helper()
	for _, r := range slices.Backward(ran) {
		if hasPrefix(r.args, prefix0, prefix1) {
			if i := slices.Index(r.args, flag); i >= 0 && i+1 < len(r.args) {
				return r.args[i+1]
			}
		}
	}
	t.Fatalf("no `rotavault %s %s %s` ran", prefix0, prefix1, flag)
	return ""
}

// waitCount waits until out holds n occurrences of substr.
func waitCount(t *testing.T, b *background, substr string, n int) {
	t.Helper()
	poll.UntilSeen(t, awaitDeadline, fmt.Sprintf("watch printing %q %d times", substr, n), func() (bool, string) {
		out := b.stdout.String()
		return strings.Count(out, substr) >= n, fmt.Sprintf("\n%s\nstderr:\n%s", out, b.stderr.String())
	})
}

func hasPrefix(args []string, prefix ...string) bool {
	return len(args) >= len(prefix) && slices.Equal(args[:len(prefix)], prefix)
}

func writeGuideFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	writeTestFile(t, path, []byte(content))
	return path
}

// guideNode is a server that can stop and start again on the same store
// and the same HTTP address (the callback URL the app registered).
type guideNode struct {
	t        *testing.T
	trans    *transcript
	cfg      serverConfig
	httpAddr string
	addr     string
	cancel   context.CancelFunc
	done     chan error
}

// start serves on httpLis, or on a new listener at the same address.
func (n *guideNode) start(httpLis net.Listener) {
	t := n.t
	t.Helper()
	if httpLis == nil {
		var err error
		if httpLis, err = net.Listen("tcp", n.httpAddr); err != nil {
			t.Fatal(err)
		}
	}
	logs := &syncbuf.Buffer{}
	n.trans.add(logs)
	cfg := n.cfg
	cfg.HTTPListener = httpLis
	cfg.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ready := make(chan string, 1)
	cfg.Ready = func(_ context.Context, s *runningServer) error {
		ready <- s.Addr.String()
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel, n.done = cancel, make(chan error, 1)
	go func() { n.done <- runServer(ctx, cfg) }()
	select {
	case n.addr = <-ready:
	case err := <-n.done:
		cancel()
		n.done = nil
		t.Fatalf("server did not start: %v", err)
	case <-time.After(awaitDeadline):
		t.Fatal("server did not become ready")
	}
}

// stop stops the server if it runs, and checks that it stopped cleanly.
func (n *guideNode) stop() {
	n.t.Helper()
	stopServer(n.t, n.cancel, &n.done)
}
