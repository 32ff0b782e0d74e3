package main

import (
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// replicaNames resolves --server names of the scheme "rvtest-replicas" to
// the addresses a test sets, as DNS would resolve a name with several A
// records (loopback offers no such name). gRPC resolves a target
// "rvtest-replicas:1" — a host:port to parseServer — with the resolver
// registered for its scheme, else with DNS, so watch dials it exactly as
// it dials any DNS name. Registered once, before any test dials: gRPC's
// registry is not safe for use while connections resolve.
var replicaNames = manual.NewBuilderWithScheme("rvtest-replicas")

func init() { resolver.Register(replicaNames) }

// The README says of `rotavault watch` that when a replica goes away "a
// DNS name with several addresses is tried address by address". Here the
// name has two: the first replica's, then another's. Watch follows the
// first; it goes away (its address closes every connection) and the store
// is served at the second address. Watch tries the first address, then
// resumes through the second, and prints the notice made meanwhile once.
func TestWatchTriesEveryAddressOfTheName(t *testing.T) {
	sim := startSim(t)
	dir := t.TempDir()
	keyFile, _ := newKeyFile(t, dir, "store.key")
	first, second := freeLoopbackAddr(t), freeLoopbackAddr(t)
	replicaNames.InitialState(resolver.State{Addresses: []resolver.Address{{Addr: first}, {Addr: second}}})

	c := newCLI(t, nil)
	node := startNode(t, dir, keyFile, c.trans, func(cfg *serverConfig) { cfg.Addr = first })
	c.env = map[string]string{"ROTAVAULT_ADDR": node.addr}
	c.run(simClientSecret+"\n", "credentials", "put", "acme", "--provider", "salesforce", "--base-url", sim.URL(),
		"--client-id", simClientID, "--client-secret-file", "-", "--scope", "api refresh_token").expect(t, exitOK)
	c.run(issueRefreshToken(t, sim)+"\n", "reauth", "import", "acme", "--refresh-token-file", "-").expect(t, exitOK)

	w := c.start(map[string]string{"ROTAVAULT_ADDR": "rvtest-replicas:1"}, "watch", "acme")
	w.stdout.WaitFor(t, "started at cursor ", awaitDeadline)

	node.stop(t)
	tries := deadReplica(t, first) // the first address is dead from here on
	node = startNode(t, dir, keyFile, c.trans, func(cfg *serverConfig) { cfg.Addr = second })
	c.env["ROTAVAULT_ADDR"] = node.addr
	c.run("", "credentials", "revoke", "acme", "--reason", "while watch was away", "--yes").expect(t, exitOK)

	w.stdout.WaitFor(t, "FAMILY_REVOKED", awaitDeadline)
	w.stderr.WaitFor(t, "reconnected after ", awaitDeadline)
	if code := w.stop(t); code != exitOK {
		t.Errorf("watch exited %d when interrupted; want 0:\n%s", code, w.stderr.String())
	}
	if out := w.stdout.String(); strings.Count(out, "FAMILY_REVOKED") != 1 {
		t.Errorf("watch printed the revocation other than once:\n%s", out)
	}
	if tries.Load() == 0 {
		t.Error("watch resumed without trying the first address")
	}
}

// deadReplica listens at addr and closes every connection at once, as a
// replica going away does, counting them.
func deadReplica(t *testing.T, addr string) *atomic.Int64 {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var tries atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := l.Accept()
			if err != nil {
				return // closed
			}
			tries.Add(1)
			_ = conn.Close()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		<-done
	})
	return &tries
}

// freeLoopbackAddr is a loopback address nothing listens on: connecting
// to it is refused until a server takes it.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}
