package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rotavault/rotavault/internal/testpki"
	"github.com/rotavault/rotavault/server"
)

// cliPKI writes a test CA, a server certificate for 127.0.0.1 and client
// certificates (ECDSA P-256) into dir.
type cliPKI struct {
	dir    string
	ca     *testpki.CA
	caFile string
}

func newCLIPKI(t *testing.T, dir string) *cliPKI {
	t.Helper()
	p := &cliPKI{dir: dir, ca: testpki.NewCA(t, "cli test CA"), caFile: filepath.Join(dir, "ca.crt")}
	writeTestFile(t, p.caFile, p.ca.PEM)
	return p
}

// issue writes name.crt and name.key; uri, if set, is the URI SAN.
func (p *cliPKI) issue(t *testing.T, name, uri string, server bool) (certFile, keyFile string) {
	t.Helper()
	leaf := testpki.Leaf{CN: name, Server: server}
	if server {
		leaf.IPs = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	if uri != "" {
		leaf.URIs = []string{uri}
	}
	certPEM, keyPEM := p.ca.Issue(t, leaf)
	certFile, keyFile = filepath.Join(p.dir, name+".crt"), filepath.Join(p.dir, name+".key")
	writeTestFile(t, certFile, certPEM)
	writeTestFile(t, keyFile, keyPEM)
	return certFile, keyFile
}

func writeTestFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestServeWithMTLSAndPolicy runs `serve` with mTLS, bearer tokens and a
// policy on loopback, and the CLI against it as several callers.
func TestServeWithMTLSAndPolicy(t *testing.T) {
	dir := t.TempDir()
	keyFile, _ := newKeyFile(t, dir, "store.key")
	pki := newCLIPKI(t, dir)
	srvCert, srvKey := pki.issue(t, "server", "", true)
	adminCert, adminKey := pki.issue(t, "admin", "spiffe://cli.test/admin", false)
	userCert, userKey := pki.issue(t, "user", "spiffe://cli.test/ns/app/sa/user", false)
	const adminToken = "cli-admin-bearer-token-6c1e"
	tokenFile := filepath.Join(dir, "admin.token")
	writeTestFile(t, tokenFile, []byte(adminToken+"\n"))
	// The tokens file line comes from the CLI itself, as an operator makes it.
	c := newCLI(t, nil)
	line := c.run(adminToken+"\n", "bearer-line", "token-admin").expect(t, exitOK).stdout
	if line != "token-admin "+server.TokenDigest(adminToken)+"\n" || strings.Contains(line, adminToken) {
		t.Fatalf("bearer-line printed %q", line)
	}
	c.run("", "bearer-line", "token-admin").expect(t, exitUsage)
	// Names the server would refuse in a tokens file are refused here too.
	for _, id := range []string{"cn:admin", "dns:ops.example.org"} {
		c.run(adminToken+"\n", "bearer-line", id).expect(t, exitUsage)
	}
	tokensFile := filepath.Join(dir, "tokens")
	writeTestFile(t, tokensFile, []byte(line))
	policyFile := filepath.Join(dir, "policy.json")
	writeTestFile(t, policyFile, []byte(`{"rules": [
		{"identity": "spiffe://cli.test/admin", "role": "admin"},
		{"identity": "token-admin", "role": "admin"},
		{"identity": "spiffe://cli.test/ns/app/*", "role": "consumer", "credentials": ["demo"]}
	]}`))

	srv := c.start(nil, "serve", "--addr", "127.0.0.1:0", "--data-dir", filepath.Join(dir, "data"), "--store-key-file", keyFile,
		"--tls-cert", srvCert, "--tls-key", srvKey, "--tls-client-ca", pki.caFile,
		"--bearer-tokens", tokensFile, "--policy", policyFile)
	addr := servingAddr(t, srv.stderr.WaitFor(t, `"rotavault serving"`, awaitDeadline))

	base := []string{"credentials", "list", "--server", addr, "--tls-ca", pki.caFile}
	c.run("", append(base, "--tls-cert", adminCert, "--tls-key", adminKey)...).expect(t, exitOK)
	c.run("", append(base, "--token-file", tokenFile)...).expect(t, exitOK)
	if r := c.run("", append(base, "--tls-cert", userCert, "--tls-key", userKey)...).expect(t, exitNotAuthorized); !strings.Contains(r.stderr, "PERMISSION_DENIED") {
		t.Errorf("a consumer listing credentials:\n%s", r.stderr)
	}
	if r := c.run("", base...).expect(t, exitNotAuthorized); !strings.Contains(r.stderr, "UNAUTHENTICATED") {
		t.Errorf("no credentials:\n%s", r.stderr)
	}
	// Plaintext to a TLS server fails; so does a token over plaintext to
	// a non-loopback server, refused by the client before dialing.
	c.run("", "credentials", "list", "--server", addr).expect(t, exitUnavailable)
	c.run("", "credentials", "list", "--server", "192.0.2.1:7443", "--token-file", tokenFile).expect(t, exitUsage)
	c.trans.assertNoSecrets(t, adminToken)
}

func TestServeAuthFlagCombinations(t *testing.T) {
	dir := t.TempDir()
	keyFile, _ := newKeyFile(t, dir, "store.key")
	policy := filepath.Join(dir, "policy.json")
	writeTestFile(t, policy, []byte(`{"rules": []}`))
	c := newCLI(t, nil)
	for _, args := range [][]string{
		{"--tls-cert", "x.crt"},
		{"--tls-client-ca", "ca.crt"},
		{"--policy", policy},
		{"--bearer-tokens", "tokens"},
	} {
		r := c.run("", append([]string{"serve", "--addr", "127.0.0.1:0", "--data-dir", dir, "--store-key-file", keyFile}, args...)...)
		r.expect(t, exitUsage)
	}
}

// TestPlaintextRefusedOffLoopback refuses plaintext on the machine's own
// non-loopback address (an address that really exists), or, on a machine
// without one, checks the classification.
func TestPlaintextRefusedOffLoopback(t *testing.T) {
	dir := t.TempDir()
	_, key := newKeyFile(t, dir, "store.key")
	if !isLoopbackAddr(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}) || isLoopbackAddr(&net.TCPAddr{IP: net.IPv4(192, 0, 2, 1)}) {
		t.Fatal("isLoopbackAddr misclassifies")
	}
	cfg := serverConfig{TLSCert: "c", TLSKey: "k", PolicyFile: "p"}
	if !cfg.allowNonLoopback() || (&serverConfig{TLSCert: "c", TLSKey: "k"}).allowNonLoopback() || (&serverConfig{PolicyFile: "p"}).allowNonLoopback() {
		t.Fatal("only TLS together with a policy may listen off loopback")
	}
	ip := nonLoopbackIP(t)
	if ip == nil {
		t.Skip("no non-loopback interface address; classification checked above")
	}
	addr := net.JoinHostPort(ip.String(), "0")
	err := runServer(context.Background(), serverConfig{Addr: addr, DataDir: dir, Key: key})
	if !isUsage(err) || !strings.Contains(err.Error(), "refusing to listen") {
		t.Fatalf("plaintext on %s: %v; want a refusal", addr, err)
	}
}

func nonLoopbackIP(t *testing.T) net.IP {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Logf("interface addresses: %v", err)
		return nil
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			return n.IP
		}
	}
	return nil
}
