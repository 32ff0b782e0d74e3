package main

import (
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/rotavault/rotavault/server"
)

// TestServerAndClientVariablesDoNotCollide gives serve and the clients one
// environment holding both families of variables, as on an operator's
// machine: serve runs with TLS, mTLS, bearer tokens and a policy taken from
// ROTAVAULT_SERVER_*, and the clients connect with their own certificate
// and token from ROTAVAULT_ADDR, ROTAVAULT_CACERT, ROTAVAULT_CLIENT_CERT,
// ROTAVAULT_CLIENT_KEY and ROTAVAULT_TOKEN_FILE. Under the earlier scheme
// (one ROTAVAULT_TLS_CERT for both) this cannot work: the client would
// present the server's certificate.
func TestServerAndClientVariablesDoNotCollide(t *testing.T) {
	dir := t.TempDir()
	_, key := newKeyFileText(t, dir)
	pki := newCLIPKI(t, dir)
	srvCert, srvKey := pki.issue(t, "server", "", true)
	adminCert, adminKey := pki.issue(t, "admin", "spiffe://cli.test/admin", false)
	const adminToken = "env-admin-bearer-token-0b7e"
	tokenFile := filepath.Join(dir, "admin.token")
	writeTestFile(t, tokenFile, []byte(adminToken+"\n"))
	tokensFile := filepath.Join(dir, "tokens")
	writeTestFile(t, tokensFile, []byte("token-admin "+server.TokenDigest(adminToken)+"\n"))
	policyFile := filepath.Join(dir, "policy.json")
	writeTestFile(t, policyFile, []byte(`{"rules": [
		{"identity": "spiffe://cli.test/admin", "role": "admin"},
		{"identity": "token-admin", "role": "admin"}
	]}`))
	dataDir := filepath.Join(dir, "data")

	env := map[string]string{
		"ROTAVAULT_SERVER_ADDR":          "127.0.0.1:0",
		"ROTAVAULT_SERVER_DATA_DIR":      dataDir,
		"ROTAVAULT_SERVER_STORE_KEY":     key,
		"ROTAVAULT_SERVER_TLS_CERT":      srvCert,
		"ROTAVAULT_SERVER_TLS_KEY":       srvKey,
		"ROTAVAULT_SERVER_TLS_CLIENT_CA": pki.caFile,
		"ROTAVAULT_SERVER_BEARER_TOKENS": tokensFile,
		"ROTAVAULT_SERVER_POLICY":        policyFile,
		// The clients' settings, present while serve starts: a client
		// address of port 1 would make serve fail to listen if it read it.
		"ROTAVAULT_ADDR":        "127.0.0.1:1",
		"ROTAVAULT_CACERT":      pki.caFile,
		"ROTAVAULT_CLIENT_CERT": adminCert,
		"ROTAVAULT_CLIENT_KEY":  adminKey,
	}
	c := newCLI(t, env)
	srv := c.start(nil, "serve")
	addr := servingAddr(t, srv.stderr.WaitFor(t, `"rotavault serving"`, awaitDeadline))
	if mode := fileMode(t, filepath.Join(dataDir, storeFileName)); mode != 0o600 {
		t.Errorf("store file mode %v, want 0600", mode)
	}
	env["ROTAVAULT_ADDR"] = addr

	t.Run("client certificate", func(t *testing.T) {
		c.run("", "credentials", "list").expect(t, exitOK)
	})
	t.Run("bearer token", func(t *testing.T) {
		c.runEnv(map[string]string{"ROTAVAULT_CLIENT_CERT": "", "ROTAVAULT_CLIENT_KEY": "", "ROTAVAULT_TOKEN_FILE": tokenFile}, "",
			"credentials", "list").expect(t, exitOK)
	})
	t.Run("no credentials", func(t *testing.T) {
		r := c.runEnv(map[string]string{"ROTAVAULT_CLIENT_CERT": "", "ROTAVAULT_CLIENT_KEY": ""}, "", "credentials", "list").expect(t, exitNotAuthorized)
		if !strings.Contains(r.stderr, "UNAUTHENTICATED") {
			t.Errorf("without a client certificate or token: %s", r.stderr)
		}
		// watch resumes from everything but this: it stops at once.
		r = c.runEnv(map[string]string{"ROTAVAULT_CLIENT_CERT": "", "ROTAVAULT_CLIENT_KEY": ""}, "", "watch").expect(t, exitNotAuthorized)
		if !strings.Contains(r.stderr, "UNAUTHENTICATED") {
			t.Errorf("watch without a client certificate or token: %s", r.stderr)
		}
	})
	t.Run("an https URL as the address", func(t *testing.T) {
		c.runEnv(map[string]string{"ROTAVAULT_ADDR": "https://" + addr}, "", "credentials", "list").expect(t, exitOK)
		c.runEnv(map[string]string{"ROTAVAULT_ADDR": "https://" + addr + "/"}, "", "credentials", "list").expect(t, exitOK)
	})
	t.Run("a flag wins over its variable", func(t *testing.T) {
		c.runEnv(map[string]string{"ROTAVAULT_ADDR": "127.0.0.1:1"}, "", "credentials", "list", "--server", addr).expect(t, exitOK)
	})
	t.Run("a bad value names the variable", func(t *testing.T) {
		r := c.runEnv(map[string]string{"ROTAVAULT_CLIENT_TIMEOUT": "soon"}, "", "credentials", "list").expect(t, exitUsage)
		if !strings.Contains(r.stderr, "ROTAVAULT_CLIENT_TIMEOUT") {
			t.Errorf("stderr %q does not name the variable", r.stderr)
		}
	})
	if code := srv.stop(t); code != exitOK {
		t.Fatalf("serve stopped with exit code %d:\n%s", code, srv.stderr.String())
	}
	c.trans.assertNoSecrets(t, adminToken, key)
}

// TestPerCallFlagsHaveNoVariable: a variable in the environment never
// changes a credential, the output format or a confirmation.
func TestPerCallFlagsHaveNoVariable(t *testing.T) {
	c, _, _ := setupCLITest(t)
	c.run("", "credentials", "put", "x", "--provider", "oauth2", "--token-url", "https://idp.example.com/token",
		"--client-id", "a", "--scope", "openid").expect(t, exitOK)

	// The reproduction from the issue: ROTAVAULT_SCOPE used to become part
	// of the update mask.
	r := c.runEnv(map[string]string{"ROTAVAULT_SCOPE": "evil"}, "", "credentials", "update", "x", "--client-id", "y").expect(t, exitOK)
	if !strings.Contains(r.stderr, "ROTAVAULT_SCOPE is ignored") {
		t.Errorf("no warning about the ignored variable:\n%s", r.stderr)
	}
	show := c.run("", "credentials", "show", "x").expect(t, exitOK).stdout
	if !regexp.MustCompile(`(?m)^scopes +openid$`).MatchString(show) || strings.Contains(show, "evil") || !regexp.MustCompile(`(?m)^client id +y$`).MatchString(show) {
		t.Errorf("after update --client-id y with ROTAVAULT_SCOPE=evil:\n%s", show)
	}

	// ROTAVAULT_YES skips nothing: without a terminal, delete refuses.
	r = c.runEnv(map[string]string{"ROTAVAULT_YES": "true"}, "", "credentials", "delete", "x").expect(t, exitUsage)
	if !strings.Contains(r.stderr, "without --yes") {
		t.Errorf("delete with ROTAVAULT_YES and no terminal:\n%s", r.stderr)
	}
	c.run("", "credentials", "show", "x").expect(t, exitOK)

	// ROTAVAULT_JSON does not switch a script's output format.
	out := c.runEnv(map[string]string{"ROTAVAULT_JSON": "true"}, "", "credentials", "show", "x").expect(t, exitOK).stdout
	if strings.HasPrefix(out, "{") {
		t.Errorf("ROTAVAULT_JSON switched the output to JSON:\n%s", out)
	}
}

// TestRetiredVariablesAreNamed: a variable of the earlier scheme still set
// is not silently dropped: the command says what replaced it.
func TestRetiredVariablesAreNamed(t *testing.T) {
	c, node, _ := setupCLITest(t)
	r := c.runEnv(map[string]string{"ROTAVAULT_ADDR": "", "ROTAVAULT_SERVER": node.addr}, "", "credentials", "list", "--server", node.addr).expect(t, exitOK)
	if !strings.Contains(r.stderr, "ROTAVAULT_SERVER is no longer read: the variable of --server is ROTAVAULT_ADDR") {
		t.Errorf("ROTAVAULT_SERVER set:\n%s", r.stderr)
	}
	r = c.runEnv(map[string]string{"ROTAVAULT_STORE_KEY": "x", "ROTAVAULT_DATA_DIR": "/nonexistent"}, "", "store", "generate-key", "--out", filepath.Join(t.TempDir(), "k")).expect(t, exitOK)
	if !strings.Contains(r.stderr, "ROTAVAULT_STORE_KEY is no longer read: the store key's variable is ROTAVAULT_SERVER_STORE_KEY") {
		t.Errorf("ROTAVAULT_STORE_KEY set:\n%s", r.stderr)
	}
}

// TestOfflineCommandsReadServeVariables: store and audit commands on the
// server's machine find the data directory and the key where serve does.
func TestOfflineCommandsReadServeVariables(t *testing.T) {
	dir := t.TempDir()
	keyFile, key := newKeyFileText(t, dir)
	c := newCLI(t, nil)
	node := startNode(t, dir, keyFile, c.trans)
	node.stop(t)
	out := filepath.Join(t.TempDir(), "b.db")

	c.runEnv(map[string]string{"ROTAVAULT_SERVER_DATA_DIR": dir, "ROTAVAULT_SERVER_STORE_KEY": key}, "",
		"store", "backup", "--out", out).expect(t, exitOK)
	c.runEnv(map[string]string{"ROTAVAULT_SERVER_DATA_DIR": dir, "ROTAVAULT_SERVER_STORE_KEY_FILE": keyFile}, "",
		"audit", "verify").expect(t, exitOK)
	r := c.runEnv(map[string]string{"ROTAVAULT_SERVER_STORE_KEY_FILE": keyFile, "ROTAVAULT_SERVER_STORE_KEY": key},
		"", "store", "backup", "--data-dir", dir, "--out", out+"2").expect(t, exitUsage)
	if !strings.Contains(r.stderr, "keep one") {
		t.Errorf("two key sources from the environment: %s", r.stderr)
	}
	// A key file named on the command line wins over the variable.
	c.runEnv(map[string]string{"ROTAVAULT_SERVER_STORE_KEY": "not-a-key"}, "",
		"store", "backup", "--data-dir", dir, "--store-key-file", keyFile, "--out", out+"3").expect(t, exitOK)
	c.trans.assertNoSecrets(t, key)
}

// TestDocumentedVariablesAreRead: every ROTAVAULT_* name the README, docs/
// and the commands' help mention is one some command reads (or the
// ROTAVAULT_SERVER_<FLAG> pattern), and every variable a command reads is in
// the README's table or follows that pattern.
func TestDocumentedVariablesAreRead(t *testing.T) {
	root := newRootCmd(strings.NewReader(""), io.Discard, io.Discard, func(string) string { return "" })
	read := currentEnvNames(root)
	// Settings of the test harness, not of rotavault; names the README
	// lists as no longer read; the pattern's stem.
	harness := map[string]bool{"ROTAVAULT_VAULT_BIN": true, "ROTAVAULT_CACHE": true, "ROTAVAULT_UPDATE_DOCS": true, "ROTAVAULT_FUZZTIME": true, "ROTAVAULT_CUTOFF_LOAD": true,
		// The fault test's (integration/chaos_test.go).
		"ROTAVAULT_FAULT_SEED": true, "ROTAVAULT_FAULT_DURATION": true, "ROTAVAULT_FAULT_STRICT": true,
		"ROTAVAULT_FAULT_BEYOND_CLAIM": true, "ROTAVAULT_FAULT_LOGS": true,
		// BenchmarkListPageVault's size (broker/listing_bench_test.go).
		"ROTAVAULT_BENCH_LIST_VAULT_N": true,
		// The restart benchmark's (broker/restart_bench_test.go).
		"ROTAVAULT_BENCH_CREDENTIALS": true,
		// The memory benchmark's (cmd/rotavault/memory_bench_test.go).
		"ROTAVAULT_BENCH_MEM_CREDENTIALS": true, "ROTAVAULT_BENCH_MEM_AGING_CREDENTIALS": true,
		"ROTAVAULT_BENCH_MEM_PROFILE": true}
	retired := map[string]bool{"ROTAVAULT_SERVER": true, "ROTAVAULT_TLS_CERT": true, "ROTAVAULT_SCOPE": true}
	// What agent --exec sets for its command; the stem of the agent's
	// ROTAVAULT_AGENT_<FLAG>.
	for _, n := range append(agentCommandEnv, strings.TrimSuffix(agentEnvPrefix, "_")) {
		retired[n] = true
	}
	docs, err := filepath.Glob(filepath.Join("..", "..", "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := filepath.Join("..", "..", "README.md")
	var readmeText string
	name := regexp.MustCompile(`ROTAVAULT_[A-Z_]*[A-Z]`)
	for _, path := range append(docs, readme) {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if path == readme {
			readmeText = string(raw)
		}
		for _, n := range name.FindAllString(string(raw), -1) {
			if !read[n] && !harness[n] && !retired[n] {
				t.Errorf("%s names %s, which no command reads", path, n)
			}
		}
	}
	for n := range read {
		if !strings.HasPrefix(n, serverEnvPrefix) && !strings.Contains(readmeText, "`"+n+"`") {
			t.Errorf("the README's environment table lacks %s", n)
		}
	}
}
