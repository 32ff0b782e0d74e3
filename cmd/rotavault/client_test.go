package main

import (
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/poll"
)

// setupCLITest starts a simulator and a server, and a CLI whose
// ROTAVAULT_ADDR points at it.
func setupCLITest(t *testing.T) (*cli, *testNode, func(id string) string) {
	t.Helper()
	sim := startSim(t)
	dir := t.TempDir()
	keyFile, _ := newKeyFile(t, dir, "store.key")
	c := newCLI(t, nil)
	node := startNode(t, dir, keyFile, c.trans)
	c.env = map[string]string{"ROTAVAULT_ADDR": node.addr}
	var refreshTokens []string
	t.Cleanup(func() { c.trans.assertNoSecrets(t, append([]string{simClientSecret}, refreshTokens...)...) })
	// install creates a Salesforce credential and imports a family, both
	// through the CLI with secrets on stdin.
	install := func(id string) string {
		t.Helper()
		c.run(simClientSecret+"\n", "credentials", "put", id, "--provider", "salesforce", "--base-url", sim.URL(),
			"--client-id", simClientID, "--client-secret-file", "-", "--scope", "api refresh_token",
			"--access-token-lifetime", "10m").expect(t, exitOK)
		rt := issueRefreshToken(t, sim)
		refreshTokens = append(refreshTokens, rt)
		c.run("  "+rt+"\n\n", "reauth", "import", id, "--refresh-token-file", "-").expect(t, exitOK)
		return rt
	}
	return c, node, install
}

func parseToken(t *testing.T, out string) *rotavaultv1.GetAccessTokenResponse {
	t.Helper()
	var resp rotavaultv1.GetAccessTokenResponse
	if err := protojson.Unmarshal([]byte(out), &resp); err != nil {
		t.Fatalf("token get --json printed %q: %v", out, err)
	}
	return &resp
}

func TestCredentialLifecycle(t *testing.T) {
	c, _, install := setupCLITest(t)

	t.Run("put reads the secret from stdin and never shows it", func(t *testing.T) {
		install("acme")
		show := c.run("", "credentials", "show", "acme").expect(t, exitOK)
		for _, want := range []string{"status", "active", "client secret", "set", "api refresh_token", "10m0s"} {
			if !strings.Contains(show.stdout, want) {
				t.Errorf("credentials show lacks %q:\n%s", want, show.stdout)
			}
		}
	})

	t.Run("token get", func(t *testing.T) {
		r := c.run("", "token", "get", "acme", "--json").expect(t, exitOK)
		tok := parseToken(t, r.stdout)
		if tok.GetGeneration() < 1 || tok.GetAccessToken() == "" || tok.GetFingerprint() == "" {
			t.Fatalf("token get --json = %v; want a token with generation >= 1 and a fingerprint", tok)
		}
		if strings.Count(strings.TrimSpace(r.stdout), "\n") != 0 {
			t.Errorf("--json printed more than one line: %q", r.stdout)
		}
		if u := tok.GetUseUntil(); u == nil || u.AsTime().After(tok.GetExpireTime().AsTime()) || !strings.Contains(r.stdout, `"useUntil":`) {
			t.Errorf("token get --json: useUntil %v with expireTime %v; want it set, not after the expiry", u, tok.GetExpireTime())
		}
		human := c.run("", "token", "get", "acme").expect(t, exitOK)
		if !regexp.MustCompile(`(?m)^use until\s+\S`).MatchString(human.stdout) {
			t.Errorf("token get lacks the use-until time:\n%s", human.stdout)
		}
		if strings.Contains(human.stdout, tok.GetAccessToken()) {
			t.Error("token get printed the access token without --show-token")
		}
		if !strings.Contains(human.stdout, tok.GetFingerprint()) || !regexp.MustCompile(`generation\s+\d+`).MatchString(human.stdout) {
			t.Errorf("token get lacks the fingerprint or generation:\n%s", human.stdout)
		}
		shown := c.run("", "token", "get", "acme", "--show-token").expect(t, exitOK)
		if !strings.Contains(shown.stdout, tok.GetAccessToken()) {
			t.Errorf("token get --show-token did not print the token:\n%s", shown.stdout)
		}
	})

	t.Run("list shows the credential in a table", func(t *testing.T) {
		r := c.run("", "credentials", "list").expect(t, exitOK)
		if !regexp.MustCompile(`ID\s+STATUS\s+GENERATION\s+TOKEN ISSUED\s+TOKEN EXPIRES\s+NEXT REFRESH\s+LAST ERROR`).MatchString(r.stdout) ||
			!regexp.MustCompile(`(?m)^acme\s+active\s+\d+\s+(now|\S+ ago)\s+in \S+\s+in \S+\s+-\s*$`).MatchString(r.stdout) {
			t.Errorf("credentials list:\n%s", r.stdout)
		}
		j := c.run("", "credentials", "list", "--json").expect(t, exitOK)
		var cred rotavaultv1.Credential
		if err := protojson.Unmarshal([]byte(strings.Split(strings.TrimSpace(j.stdout), "\n")[0]), &cred); err != nil || cred.GetCredentialId() != "acme" {
			t.Errorf("credentials list --json = %q (%v)", j.stdout, err)
		}
	})

	t.Run("update sets only the flags given", func(t *testing.T) {
		c.run("", "credentials", "put", "public-app", "--provider", "oauth2", "--token-url", "https://idp.example.com/token",
			"--client-id", "app", "--scope", "openid", "--scope", "offline_access").expect(t, exitOK)
		if got := showCredential(t, c, "public-app"); got.GetHasClientSecret() {
			t.Fatal("a credential put without a secret has one")
		}
		const newSecret = "rotated-secret-b7e2a94c"
		r := c.run(newSecret+"\n", "credentials", "update", "public-app", "--client-secret-file", "-").expect(t, exitOK)
		if !strings.Contains(r.stdout, "updated public-app: client_secret\n") {
			t.Errorf("update did not report its mask:\n%s", r.stdout)
		}
		got := showCredential(t, c, "public-app")
		if !got.GetHasClientSecret() {
			t.Error("has_client_secret is still false after update --client-secret-file")
		}
		if s := got.GetSpec(); strings.Join(s.GetScopes(), " ") != "openid offline_access" || s.GetTokenUrl() != "https://idp.example.com/token" {
			t.Errorf("update changed fields it was not given: %v", s)
		}
		c.trans.assertNoSecrets(t, newSecret)
	})

	t.Run("delete", func(t *testing.T) {
		r := c.run("", "credentials", "delete", "public-app").expect(t, exitUsage)
		if !strings.Contains(r.stderr, "--yes") {
			t.Errorf("delete without a terminal or --yes: %s", r.stderr)
		}
		showCredential(t, c, "public-app") // still there
		c.run("", "credentials", "delete", "public-app", "--yes").expect(t, exitOK)
		gone := c.run("", "credentials", "show", "public-app").expect(t, exitNotFound)
		if !strings.Contains(gone.stderr, "(NOT_FOUND)") {
			t.Errorf("show after delete: %s", gone.stderr)
		}
	})
}

func showCredential(t *testing.T, c *cli, id string) *rotavaultv1.Credential {
	t.Helper()
	r := c.run("", "credentials", "show", id, "--json").expect(t, exitOK)
	var cred rotavaultv1.Credential
	if err := protojson.Unmarshal([]byte(r.stdout), &cred); err != nil {
		t.Fatalf("credentials show --json printed %q: %v", r.stdout, err)
	}
	return &cred
}

func TestErrorsForPeople(t *testing.T) {
	c, _, _ := setupCLITest(t)
	c.run("", "credentials", "put", "fresh", "--provider", "salesforce", "--base-url", "https://login.salesforce.com",
		"--client-id", "x", "--scope", "api", "--scope", "refresh_token").expect(t, exitOK)
	tests := []struct {
		name       string
		args       []string
		code       int
		wantStderr []string
	}{
		{"no family yet", []string{"token", "get", "fresh"}, exitReauthRequired,
			[]string{"(FAILED_PRECONDITION, reason REAUTHENTICATION_REQUIRED)", "hint: install a new token family"}},
		{"unknown credential", []string{"token", "get", "nope"}, exitNotFound, []string{"(NOT_FOUND)"}},
		{"unattainable lifetime", []string{"token", "get", "fresh", "--min-remaining", "10h"}, exitUsage,
			[]string{"(INVALID_ARGUMENT, reason MIN_LIFETIME_UNATTAINABLE)"}},
		{"missing id", []string{"token", "get"}, exitUsage, []string{"accepts 1 arg"}},
		{"both rejected forms", []string{"token", "get", "fresh", "--rejected-generation", "1", "--rejected-fingerprint", "00"}, exitUsage, []string{"not both"}},
		{"unknown flag", []string{"token", "get", "fresh", "--bogus"}, exitUsage, []string{"unknown flag"}},
		{"unknown command", []string{"credentials", "lst"}, exitUsage, []string{`unknown command "lst"`, "did you mean list"}},
		{"import without a file", []string{"reauth", "import", "fresh"}, exitUsage, []string{"--refresh-token-file is required"}},
		{"empty refresh token", []string{"reauth", "import", "fresh", "--refresh-token-file", "-"}, exitUsage, []string{"no refresh token in stdin"}},
		{"update without fields", []string{"credentials", "update", "fresh"}, exitUsage, []string{"nothing to update"}},
		{"put without provider", []string{"credentials", "put", "other"}, exitUsage, []string{"--provider is required"}},
		{"server down", []string{"credentials", "list", "--server", "127.0.0.1:1"}, exitUnavailable, []string{"(UNAVAILABLE)", "hint: is a Rotavault server running at 127.0.0.1:1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := c.run("", tt.args...).expect(t, tt.code)
			for _, want := range tt.wantStderr {
				if !strings.Contains(r.stderr, want) {
					t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
				}
			}
			if r.stdout != "" {
				t.Errorf("a failed command printed to stdout: %q", r.stdout)
			}
		})
	}
}

func TestWatch(t *testing.T) {
	c, _, install := setupCLITest(t)

	w := c.start(nil, "watch", "acme")
	started := w.stdout.WaitFor(t, "started at cursor ", awaitDeadline)
	cursor := regexp.MustCompile(`started at cursor (\S+)`).FindStringSubmatch(started)[1]
	install("acme")
	install("other") // filtered out
	out := w.stdout.WaitFor(t, "FAMILY_ACTIVATED  acme", awaitDeadline)
	if code := w.stop(t); code != exitOK {
		t.Errorf("interrupted watch exited %d", code)
	}
	if strings.Contains(out, "other") {
		t.Errorf("watch acme printed another credential's notice:\n%s", out)
	}
	if !strings.Contains(w.stderr.String(), "resume with: rotavault watch acme --cursor ") {
		t.Errorf("interrupted watch did not say how to resume: %s", w.stderr.String())
	}

	t.Run("resumes from a cursor as JSON lines", func(t *testing.T) {
		r := c.start(nil, "watch", "--cursor", cursor, "--json")
		out := r.stdout.WaitFor(t, "NOTICE_KIND_FAMILY_ACTIVATED", awaitDeadline)
		r.stop(t)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		var first, second rotavaultv1.WatchRevocationsResponse
		if err := protojson.Unmarshal([]byte(lines[0]), &first); err != nil || first.GetStarted() == nil {
			t.Fatalf("first line %q is not the started message (%v)", lines[0], err)
		}
		if err := protojson.Unmarshal([]byte(lines[1]), &second); err != nil || second.GetNotice().GetCredentialId() != "acme" {
			t.Fatalf("second line %q is not acme's replayed notice (%v)", lines[1], err)
		}
	})

	t.Run("a cursor of another notice log says to resynchronise", func(t *testing.T) {
		dir := t.TempDir()
		keyFile, _ := newKeyFile(t, dir, "store.key")
		elsewhere := startNode(t, dir, keyFile, c.trans)
		other := c.start(map[string]string{"ROTAVAULT_ADDR": elsewhere.addr}, "watch")
		foreign := regexp.MustCompile(`started at cursor (\S+)`).FindStringSubmatch(other.stdout.WaitFor(t, "started at cursor ", awaitDeadline))[1]
		other.stop(t)
		r := c.run("", "watch", "--cursor", foreign).expect(t, exitCursorExpired)
		for _, want := range []string{"(OUT_OF_RANGE, reason CURSOR_EXPIRED)", "hint: notices after that cursor are no longer kept: resynchronise"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
			}
		}
	})
}

// TestWatchOutlivesTheConnection runs watch against a server that ends
// every connection after 3 s (GOAWAY at --max-connection-age, streams cut
// 1 s later) and is then
// restarted: watch resumes by itself each time, says so in one line, and
// prints every notice exactly once, including one made while it was
// reconnecting. Interrupted, it exits 0 and says how to resume.
func TestWatchOutlivesTheConnection(t *testing.T) {
	sim := startSim(t)
	dir := t.TempDir()
	keyFile, _ := newKeyFile(t, dir, "store.key")
	c := newCLI(t, nil)
	ageOut := func(cfg *serverConfig) { cfg.MaxConnectionAge, cfg.MaxConnectionAgeGrace = 3*time.Second, time.Second }
	node := startNodeWith(t, dir, keyFile, c.trans, ageOut)
	c.env = map[string]string{"ROTAVAULT_ADDR": node.addr}
	c.run(simClientSecret+"\n", "credentials", "put", "acme", "--provider", "salesforce", "--base-url", sim.URL(),
		"--client-id", simClientID, "--client-secret-file", "-", "--scope", "api refresh_token").expect(t, exitOK)
	importFamily := func() {
		t.Helper()
		c.run(issueRefreshToken(t, sim)+"\n", "reauth", "import", "acme", "--refresh-token-file", "-").expect(t, exitOK)
	}

	w := c.start(nil, "watch", "acme")
	w.stdout.WaitFor(t, "started at cursor ", awaitDeadline)
	importFamily()
	w.stdout.WaitFor(t, "FAMILY_ACTIVATED", awaitDeadline)
	// The connection ages out after 3 s: watch reconnects.
	w.stderr.WaitFor(t, "reconnected after ", awaitDeadline)
	c.run("", "credentials", "revoke", "acme", "--reason", "after a GOAWAY", "--yes").expect(t, exitOK)
	w.stdout.WaitFor(t, "FAMILY_REVOKED", awaitDeadline)

	// A restart: the notice made before watch is back reaches it through
	// its cursor.
	node.stop(t)
	node = startNodeWith(t, dir, keyFile, c.trans, func(cfg *serverConfig) { ageOut(cfg); cfg.Addr = node.addr })
	importFamily()
	poll.UntilSeen(t, awaitDeadline, "the activation made during the restart", func() (bool, string) {
		out := w.stdout.String()
		return strings.Count(out, "FAMILY_ACTIVATED") == 2, out
	})
	if out := w.stdout.String(); strings.Count(out, "FAMILY_ACTIVATED") != 2 || strings.Count(out, "FAMILY_REVOKED") != 1 {
		t.Errorf("watch printed notices missing or twice:\n%s", out)
	}
	if errOut := w.stderr.String(); strings.Count(errOut, "reconnected after ") < 2 || strings.Contains(errOut, "\nerror: ") {
		t.Errorf("watch stderr after a restart:\n%s", errOut)
	}
	if code := w.stop(t); code != exitOK {
		t.Errorf("watch exited %d when interrupted; want 0:\n%s", code, w.stderr.String())
	}
	if !strings.Contains(w.stderr.String(), "stopped; resume with: rotavault watch acme --cursor ") {
		t.Errorf("watch did not say how to resume:\n%s", w.stderr.String())
	}
}

func TestCredentialsRevoke(t *testing.T) {
	c, _, install := setupCLITest(t)
	install("acme")
	if r := c.run("", "credentials", "revoke", "acme", "--yes").expect(t, exitUsage); !strings.Contains(r.stderr, "--reason is required") {
		t.Errorf("revoke without --reason: %s", r.stderr)
	}
	if r := c.run("", "credentials", "revoke", "acme", "--reason", "leak").expect(t, exitUsage); !strings.Contains(r.stderr, "--yes") {
		t.Errorf("revoke without a terminal or --yes: %s", r.stderr)
	}
	c.run("", "token", "get", "acme").expect(t, exitOK) // nothing was revoked

	r := c.run("", "credentials", "revoke", "acme", "--reason", "laptop stolen", "--yes").expect(t, exitOK)
	if !regexp.MustCompile(`^acme: family \S+ \(generation \d+\) revoked\nprovider revocation: confirmed\n$`).MatchString(r.stdout) {
		t.Errorf("revoke printed:\n%s", r.stdout)
	}
	got := c.run("", "token", "get", "acme").expect(t, exitReauthRequired)
	if !strings.Contains(got.stderr, "REAUTHENTICATION_REQUIRED") {
		t.Errorf("token get after revoke: %s", got.stderr)
	}
	if cred := showCredential(t, c, "acme"); cred.GetRevocationReason() != rotavaultv1.RevocationReason_REVOCATION_REASON_ADMIN_REVOKED {
		t.Errorf("revocation reason = %v", cred.GetRevocationReason())
	}
	again := c.run("", "credentials", "revoke", "acme", "--reason", "again", "--yes", "--json").expect(t, exitOK)
	var resp rotavaultv1.RevokeCredentialResponse
	if err := protojson.Unmarshal([]byte(again.stdout), &resp); err != nil || !resp.GetAlreadyRevoked() {
		t.Errorf("second revoke --json = %q (%v)", again.stdout, err)
	}
	if r := c.run("", "credentials", "revoke", "nope", "--reason", "x", "--yes").expect(t, exitNotFound); !strings.Contains(r.stderr, "NOT_FOUND") {
		t.Errorf("revoke of an unknown credential: %s", r.stderr)
	}
}

// TestCredentialJSONIsOneShape: show, list, put and update --json print the
// same object for the same credential, so one jq filter reads them all.
func TestCredentialJSONIsOneShape(t *testing.T) {
	c, _, _ := setupCLITest(t)
	put := c.run("", "credentials", "put", "shape", "--provider", "oauth2", "--token-url", "https://idp.example.com/token", "--client-id", "x", "--json").expect(t, exitOK).stdout
	update := c.run("", "credentials", "update", "shape", "--client-id", "y", "--json").expect(t, exitOK).stdout
	show := c.run("", "credentials", "show", "shape", "--json").expect(t, exitOK).stdout
	list := c.run("", "credentials", "list", "--json").expect(t, exitOK).stdout
	if list != show || update != show {
		t.Errorf("credentials list --json:\n%s\nshow --json:\n%s\nupdate --json:\n%s", list, show, update)
	}
	var created, shown rotavaultv1.Credential
	if err := protojson.Unmarshal([]byte(put), &created); err != nil || created.GetCredentialId() != "shape" {
		t.Errorf("credentials put --json printed %q (%v); want the credential", put, err)
	}
	if err := protojson.Unmarshal([]byte(show), &shown); err != nil || shown.GetSpec().GetClientId() != "y" {
		t.Errorf("credentials show --json printed %q (%v); want the credential", show, err)
	}
}

// TestIdleFamilyRefreshesOnDemand: a family whose token nobody used is not
// refreshed ahead of expiry; list and show say "on demand" rather than a
// refresh time in the past that reads as overdue.
func TestIdleFamilyRefreshesOnDemand(t *testing.T) {
	c, _, _ := setupCLITest(t)
	sim := startSim(t)
	// A 10 s token is due for its ahead-of-expiry refresh within its life.
	c.run(simClientSecret+"\n", "credentials", "put", "idle", "--provider", "salesforce", "--base-url", sim.URL(),
		"--client-id", simClientID, "--client-secret-file", "-", "--scope", "api refresh_token", "--access-token-lifetime", "10s").expect(t, exitOK)
	rt := issueRefreshToken(t, sim)
	c.run(rt+"\n", "reauth", "import", "idle", "--refresh-token-file", "-").expect(t, exitOK)
	onDemand := regexp.MustCompile(`(?m)^next refresh +on demand: `)
	poll.UntilSeen(t, 15*time.Second, "show saying the idle family refreshes on demand", func() (bool, string) {
		show := c.run("", "credentials", "show", "idle").expect(t, exitOK).stdout
		return onDemand.MatchString(show), show
	})
	list := c.run("", "credentials", "list").expect(t, exitOK).stdout
	if !regexp.MustCompile(`(?m)^idle .* on demand +-$`).MatchString(list) {
		t.Errorf("list of an idle family:\n%s", list)
	}
	c.trans.assertNoSecrets(t, rt)
}

// TestRejectedTokenReportSaysWhatHappened: the server says what a
// rejected-token report caused (rejected_token_outcome), and the CLI passes
// it on in one call: a note on stderr, the field in --json, exit status 0.
// A stale report is ignored, one on a token the provider vouches for
// changes nothing, one on a token dead at the provider replaces it.
func TestRejectedTokenReportSaysWhatHappened(t *testing.T) {
	c, _, install := setupCLITest(t)
	install("acme")
	cur := parseToken(t, c.run("", "token", "get", "acme", "--json").expect(t, exitOK).stdout)
	gen := cur.GetGeneration()
	report := func(flag, value string) (*rotavaultv1.GetAccessTokenResponse, string) {
		t.Helper()
		r := c.run("", "token", "get", "acme", "--json", flag, value).expect(t, exitOK)
		return parseToken(t, r.stdout), r.stderr
	}

	stale, note := report("--rejected-generation", fmt.Sprint(gen+7))
	if want := fmt.Sprintf("note: report ignored: generation %d is not acme's current token (generation %d is)", gen+7, gen); !strings.Contains(note, want) ||
		stale.GetRejectedTokenOutcome() != rotavaultv1.RejectedTokenOutcome_REJECTED_TOKEN_OUTCOME_STALE_REPORT || stale.GetGeneration() != gen {
		t.Errorf("a report of a stale generation: outcome %s, generation %d, stderr %q; want STALE_REPORT, %d and %q",
			stale.GetRejectedTokenOutcome(), stale.GetGeneration(), note, gen, want)
	}
	vouched, note := report("--rejected-generation", fmt.Sprint(gen))
	if !strings.Contains(note, "note: the report changed nothing: the provider still accepts generation") ||
		vouched.GetRejectedTokenOutcome() != rotavaultv1.RejectedTokenOutcome_REJECTED_TOKEN_OUTCOME_NO_CHANGE || vouched.GetGeneration() != gen {
		t.Errorf("a report the provider disproves: outcome %s, generation %d, stderr %q", vouched.GetRejectedTokenOutcome(), vouched.GetGeneration(), note)
	}
	if got := parseToken(t, c.run("", "token", "get", "acme", "--json").expect(t, exitOK).stdout).GetGeneration(); got != gen {
		t.Errorf("generation %d after the reports, want %d (nothing to refresh)", got, gen)
	}

	// The access token alone dies at the provider (revoked there, RFC 7009):
	// the report refreshes.
	cred := showCredential(t, c, "acme")
	resp, err := http.PostForm(cred.GetSpec().GetBaseUrl()+"/services/oauth2/revoke", url.Values{"token": {cur.GetAccessToken()}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// The rejection interval between reports that refresh is 30 s; the two
	// above did not refresh, and the probe interval (1 s) has to pass.
	var replaced *rotavaultv1.GetAccessTokenResponse
	poll.UntilSeen(t, awaitDeadline, "a report of the dead token to be acted on", func() (bool, string) {
		r := c.run("", "token", "get", "acme", "--json", "--rejected-fingerprint", cur.GetFingerprint())
		if r.code != exitOK {
			return false, r.stderr
		}
		replaced, note = parseToken(t, r.stdout), r.stderr
		return true, ""
	})
	if want := fmt.Sprintf("note: the token with fingerprint %s was replaced: generation %d", cur.GetFingerprint(), gen+1); !strings.Contains(note, want) ||
		replaced.GetRejectedTokenOutcome() != rotavaultv1.RejectedTokenOutcome_REJECTED_TOKEN_OUTCOME_TOKEN_REPLACED || replaced.GetGeneration() != gen+1 {
		t.Errorf("a report of a token dead at the provider: outcome %s, generation %d, stderr %q; want TOKEN_REPLACED, %d and %q",
			replaced.GetRejectedTokenOutcome(), replaced.GetGeneration(), note, gen+1, want)
	}
}
