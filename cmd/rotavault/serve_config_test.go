package main

import (
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// exampleConfig is the commented example the README points at.
var exampleConfig = filepath.Join("..", "..", "deploy", "rotavault.yaml")

// TestServeConfigExampleCoversEverySetting loads deploy/rotavault.yaml
// with its "# key: value" lines uncommented through serve's own loader:
// every value parses, and every setting of serve is in the example, so the
// example is the complete schema (a flag added to serve must be added
// there).
func TestServeConfigExampleCoversEverySetting(t *testing.T) {
	raw, err := os.ReadFile(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	full := regexp.MustCompile(`(?m)^# ([a-z][a-z0-9_]*: )`).ReplaceAllString(string(raw), "$1")
	path := filepath.Join(t.TempDir(), "full.yaml")
	writeTestFile(t, path, []byte(full))

	a := &app{stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard, env: func(string) string { return "" }, sources: make(map[string]string)}
	serve := newServeCmd(a)
	if err := serve.Flags().Set(configFlag, path); err != nil {
		t.Fatal(err)
	}
	if err := a.applyConfigFile(serve); err != nil {
		t.Fatalf("the example, every setting uncommented, does not load: %v", err)
	}
	var missing []string
	for key, f := range configFlags(serve) {
		if a.sources[f.Name] != sourceConfig && !(isListFlag(f) && regexp.MustCompile(`(?m)^`+key+`: `).MatchString(full)) {
			missing = append(missing, key)
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("deploy/rotavault.yaml lacks these settings of serve: %s", strings.Join(missing, ", "))
	}
}

// TestServeConfigPrecedence runs serve with a config file, then with a
// variable, then with a flag for the same setting: flags > environment >
// file > defaults. The data directory serve logs shows which one won.
func TestServeConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	keyFile, key := newKeyFileText(t, dir)
	fileDir, envDir, flagDir := filepath.Join(dir, "from-file"), filepath.Join(dir, "from-env"), filepath.Join(dir, "from-flag")
	config := filepath.Join(dir, "rotavault.yaml")
	writeTestFile(t, config, []byte("addr: 127.0.0.1:0\ndata_dir: "+fileDir+"\nstore_key_file: "+keyFile+"\n"))

	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"the file over the defaults", nil, nil, fileDir},
		{"a variable over the file", map[string]string{"ROTAVAULT_SERVER_DATA_DIR": envDir}, nil, envDir},
		{"a flag over the variable", map[string]string{"ROTAVAULT_SERVER_DATA_DIR": envDir}, []string{"--data-dir", flagDir}, flagDir},
		{"the config file named by its variable; the inline key over the file's key file",
			map[string]string{"ROTAVAULT_SERVER_CONFIG": config, "ROTAVAULT_SERVER_STORE_KEY": key}, nil, fileDir},
	}
	c := newCLI(t, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"serve"}, tt.args...)
			if tt.env["ROTAVAULT_SERVER_CONFIG"] == "" {
				args = append(args, "--config", config)
			}
			srv := c.start(tt.env, args...)
			logs := srv.stderr.WaitFor(t, `"rotavault serving"`, awaitDeadline)
			if !strings.Contains(logs, `"data_dir":"`+tt.want+`"`) {
				t.Errorf("serve used another data directory than %s:\n%s", tt.want, logs)
			}
			if code := srv.stop(t); code != exitOK {
				t.Errorf("serve exited %d:\n%s", code, srv.stderr.String())
			}
		})
	}
	c.trans.assertNoSecrets(t, key)
}

// TestServeConfigRefusesBadFiles: a file serve cannot apply exactly is
// refused with exit status 2, naming the key and its line, before anything
// is opened.
func TestServeConfigRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	keyFile, _ := newKeyFile(t, dir, "store.key")
	dataDir := filepath.Join(dir, "data")
	head := "addr: 127.0.0.1:0\ndata_dir: " + dataDir + "\nstore_key_file: " + keyFile + "\n"
	tests := []struct {
		name, body string
		want       []string
	}{
		{"unknown key", "tls_certificate: /etc/x.crt\n", []string{":4: unknown setting \"tls_certificate\""}},
		{"flag spelling", "refresh-claim-ttl: 30s\n", []string{":4: unknown setting \"refresh-claim-ttl\""}},
		{"bad duration", "refresh_claim_ttl: soon\n", []string{":4: refresh_claim_ttl:", "soon"}},
		{"bad number", "rate_limit: fast\n", []string{":4: rate_limit:"}},
		{"a key given twice", "addr: 127.0.0.1:1\n", []string{":4: addr is already set on line 1"}},
		{"list for a scalar setting", "log_level: [debug]\n", []string{":4: log_level takes one value, not a list"}},
		{"mapping", "tls:\n  cert: x\n", []string{":4: tls: want a value or a list of values"}},
		{"no value", "policy:\n", []string{":4: policy has no value"}},
		{"deprecated name", "insecure_listen_on_non_loopback_i_know_what_i_am_doing: true\n", []string{"unknown setting"}},
		{"the config key itself", "config: other.yaml\n", []string{"unknown setting \"config\""}},
		{"a one-off decision, not a setting", "accept_missing_audit_anchor: true\n", []string{"unknown setting \"accept_missing_audit_anchor\""}},
	}
	c := newCLI(t, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "rotavault.yaml")
			writeTestFile(t, path, []byte(head+tt.body))
			r := c.run("", "serve", "--config", path).expect(t, exitUsage)
			for _, want := range tt.want {
				if !strings.Contains(r.stderr, want) {
					t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
				}
			}
			if _, err := os.Stat(dataDir); err == nil {
				t.Fatal("serve created its data directory despite a refused config file")
			}
		})
	}
	c.run("", "serve", "--config", filepath.Join(dir, "missing.yaml")).expect(t, exitUsage)
}
