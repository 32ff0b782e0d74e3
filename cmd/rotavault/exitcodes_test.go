package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestExitCodesTellFailuresApart runs each kind of failure against a real
// server, with --json: the exit code says what happened, and stderr holds
// exactly one JSON object a script can read (code, reason, message,
// retry_after where the server gives one).
func TestExitCodesTellFailuresApart(t *testing.T) {
	c, _, _ := setupCLITest(t)
	c.run("", "credentials", "put", "fresh", "--provider", "salesforce", "--base-url", "https://login.salesforce.com",
		"--client-id", "x", "--scope", "api refresh_token").expect(t, exitOK)
	// A provider nobody answers at: importing a token stores it unproven
	// (a success: importing again would gain nothing), then a token is
	// refused as worth a retry.
	c.run("", "credentials", "put", "unreachable", "--provider", "salesforce", "--base-url", "http://127.0.0.1:1",
		"--client-id", "x", "--scope", "api refresh_token").expect(t, exitOK)
	c.run("an-imported-refresh-token\n", "reauth", "import", "unreachable", "--refresh-token-file", "-").expect(t, exitOK)

	tests := []struct {
		name       string
		stdin      string
		args       []string
		exit       int
		code       string
		reason     string
		retryAfter bool
		hint       string
	}{
		{"reauthentication required", "", []string{"token", "get", "fresh"}, exitReauthRequired, "FAILED_PRECONDITION", "REAUTHENTICATION_REQUIRED", false, "rotavault reauth device fresh"},
		{"not found", "", []string{"token", "get", "nope"}, exitNotFound, "NOT_FOUND", "", false, ""},
		{"already exists", "", []string{"credentials", "put", "fresh", "--provider", "oauth2", "--token-url", "https://idp.example.com/token", "--client-id", "x"},
			exitAlreadyExists, "ALREADY_EXISTS", "", false, "rotavault credentials update fresh"},
		{"usage, refused by the CLI", "", []string{"token", "get"}, exitUsage, "USAGE", "", false, ""},
		{"usage, refused by the server", "", []string{"token", "get", "fresh", "--min-remaining", "10h"}, exitUsage, "INVALID_ARGUMENT", "MIN_LIFETIME_UNATTAINABLE", false, ""},
		{"no server", "", []string{"credentials", "list", "--server", "127.0.0.1:1"}, exitUnavailable, "UNAVAILABLE", "", false, "is a Rotavault server running"},
		{"provider unreachable", "", []string{"token", "get", "unreachable"}, exitUnavailable, "UNAVAILABLE", "PROVIDER_UNAVAILABLE", true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := c.run(tt.stdin, append(tt.args, "--json")...).expect(t, tt.exit)
			if r.stdout != "" {
				t.Errorf("stdout %q, want nothing", r.stdout)
			}
			if strings.Count(r.stderr, "\n") != 1 {
				t.Fatalf("stderr is not one line:\n%s", r.stderr)
			}
			var got jsonError
			dec := json.NewDecoder(strings.NewReader(r.stderr))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&got); err != nil {
				t.Fatalf("stderr is not the JSON error object: %v\n%s", err, r.stderr)
			}
			if got.ExitCode != tt.exit || got.Code != tt.code || got.Reason != tt.reason || got.Message == "" ||
				(got.RetryAfter != "") != tt.retryAfter || !strings.Contains(got.Hint, tt.hint) {
				t.Errorf("stderr %+v; want exit %d, code %s, reason %q, retry_after %v, hint containing %q", got, tt.exit, tt.code, tt.reason, tt.retryAfter, tt.hint)
			}
			if strings.HasPrefix(got.Message, "broker:") {
				t.Errorf("message in the server's package words: %q", got.Message)
			}
		})
	}
}

// TestErrorMessagesNameFlags: a field the server refuses is named by the
// flag that sets it, and messages carry no Go package prefix.
func TestErrorMessagesNameFlags(t *testing.T) {
	c, _, _ := setupCLITest(t)
	r := c.run("", "credentials", "put", "nobase", "--provider", "salesforce", "--client-id", "x", "--scope", "api refresh_token").expect(t, exitUsage)
	if !strings.Contains(r.stderr, "error: invalid --base-url: required for Salesforce") || strings.Contains(r.stderr, "spec.") || strings.Contains(r.stderr, "broker:") {
		t.Errorf("put without --base-url:\n%s", r.stderr)
	}
	r = c.run("", "credentials", "put", "norefresh", "--provider", "salesforce", "--base-url", "https://login.salesforce.com", "--client-id", "x", "--scope", "api").expect(t, exitUsage)
	if !strings.Contains(r.stderr, "error: invalid --scope: Salesforce issues a refresh token only with the refresh_token (or offline_access) scope") {
		t.Errorf("put of a Salesforce credential without a refresh scope:\n%s", r.stderr)
	}
	c.run("", "credentials", "show", "norefresh").expect(t, exitNotFound)
	r = c.run("", "token", "get", "nope").expect(t, exitNotFound)
	if !strings.HasPrefix(r.stderr, "error: credential not found") {
		t.Errorf("token get of a missing credential:\n%s", r.stderr)
	}
}

// TestServerAddressForms: --server takes host:port or an https URL, and
// says so for anything else, before dialing.
func TestServerAddressForms(t *testing.T) {
	c := newCLI(t, nil)
	for _, server := range []string{"http://127.0.0.1:7443", "127.0.0.1", "rotavault.internal", "https://h.example/v1", "grpc://h:1", "h:port", "https://user@h:1"} {
		r := c.run("", "credentials", "list", "--server", server).expect(t, exitUsage)
		if !strings.Contains(r.stderr, "want host:port (e.g. 127.0.0.1:7443) or https://host:port") {
			t.Errorf("--server %s:\n%s", server, r.stderr)
		}
	}
	for server, want := range map[string]string{
		"127.0.0.1:7443":          "127.0.0.1:7443",
		"https://rv.example":      "rv.example:443",
		"https://rv.example:8443": "rv.example:8443",
		"[::1]:7443":              "[::1]:7443",
	} {
		if got, _, err := parseServer(server); err != nil || got != want {
			t.Errorf("parseServer(%q) = %q, %v; want %q", server, got, err, want)
		}
	}
}

// TestExitCodeTableMatchesREADME checks the README's exit-code table
// against the classification: each gRPC code a row names (with its
// reason, where it names one) exits with that row's status.
func TestExitCodeTableMatchesREADME(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	byName := make(map[string]codes.Code)
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		byName[codeName(c)] = c
	}
	row := regexp.MustCompile("(?m)^\\| ([0-9]) \\| [^|]+ \\| ([^|]*) \\|")
	tick := regexp.MustCompile("`([A-Z_]+)`")
	rows := row.FindAllStringSubmatch(string(raw), -1)
	if len(rows) != 9 {
		t.Fatalf("the README's exit-code table has %d rows, want 9 (0-8)", len(rows))
	}
	for _, r := range rows {
		want, _ := strconv.Atoi(r[1])
		var reason string
		if i := strings.Index(r[2], "reason `"); i >= 0 {
			reason = tick.FindStringSubmatch(r[2][i:])[1]
		}
		for _, m := range tick.FindAllStringSubmatch(r[2], -1) {
			code, ok := byName[m[1]]
			if !ok {
				continue // a reason
			}
			st := status.New(code, "x")
			if reason != "" {
				st, _ = st.WithDetails(&errdetails.ErrorInfo{Reason: reason})
			}
			err := error(&commandError{err: st.Err()})
			if code == codes.OK {
				continue
			}
			if got := exitCode(err, false); got != want {
				t.Errorf("%s (reason %q): exit %d, the README says %d", m[1], reason, got, want)
			}
		}
	}
}
