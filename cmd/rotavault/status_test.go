package main

import (
	"encoding/json"
	"net"
	"strings"
	"testing"
)

func TestStatusShowsAServerAtAGlance(t *testing.T) {
	dir := t.TempDir()
	keyFile, _ := newKeyFile(t, t.TempDir(), "store.key")
	c := newCLI(t, nil)
	node := startNode(t, dir, keyFile, c.trans)
	c.env = map[string]string{"ROTAVAULT_ADDR": node.addr}
	for _, id := range []string{"a", "b"} {
		c.run("", "credentials", "put", id, "--provider", "oauth2", "--token-url", "https://idp.example.com/token", "--client-id", "x").expect(t, exitOK)
	}

	r := c.run("", "status").expect(t, exitOK)
	for _, want := range []string{"Server", node.addr, "Version", "Store", "embedded", "Ready", "true",
		"Credentials awaiting_reauthentication  2", "Credentials active", "Credentials revoked"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, r.stdout)
		}
	}

	r = c.run("", "status", "--json").expect(t, exitOK)
	var st struct {
		Version          string `json:"version"`
		StoreBackend     string `json:"storeBackend"`
		Ready            bool   `json:"ready"`
		CredentialCounts []struct {
			Status string `json:"status"`
			Count  string `json:"count"`
		} `json:"credentialCounts"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	counts := map[string]string{}
	for _, c := range st.CredentialCounts {
		counts[c.Status] = c.Count
	}
	if st.Version == "" || st.StoreBackend != "embedded" || !st.Ready || counts["CREDENTIAL_STATUS_AWAITING_REAUTHENTICATION"] != "2" || len(counts) != 4 {
		t.Fatalf("status --json: %+v", st)
	}

	// Nothing listens: unreachable is worth a retry.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := lis.Addr().String()
	_ = lis.Close()
	r = c.runEnv(map[string]string{"ROTAVAULT_ADDR": gone}, "", "status", "--timeout", "2s").expect(t, exitUnavailable)
	if r = c.runEnv(map[string]string{"ROTAVAULT_ADDR": gone}, "", "status", "--json", "--timeout", "2s").expect(t, exitUnavailable); !strings.Contains(r.stderr, "{") {
		t.Errorf("status --json of an unreachable server: stderr %q, want a JSON error", r.stderr)
	}
}
