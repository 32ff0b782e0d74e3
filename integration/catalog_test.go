package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/rotavault/rotavault/broker/option"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/server"
)

// loopbackBearer presents a bearer token over plaintext, which the server
// accepts from loopback peers only.
type loopbackBearer string

func (b loopbackBearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (loopbackBearer) RequireTransportSecurity() bool { return false }

// catalogCallers are named identities with bearer tokens, and the auth
// that knows them.
type catalogCallers struct {
	tokens map[string]string // identity → token
	auth   *server.Auth
}

func newCatalogCallers(t *testing.T, policy string, identities ...string) *catalogCallers {
	t.Helper()
	c := &catalogCallers{tokens: make(map[string]string)}
	var lines strings.Builder
	for _, id := range identities {
		raw := make([]byte, 16)
		if _, err := rand.Read(raw); err != nil {
			t.Fatal(err)
		}
		c.tokens[id] = "catalog-" + hex.EncodeToString(raw)
		fmt.Fprintf(&lines, "%s %s\n", id, server.TokenDigest(c.tokens[id]))
	}
	ts, err := server.ParseTokens([]byte(lines.String()))
	if err != nil {
		t.Fatal(err)
	}
	p, err := server.ParsePolicy([]byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	if c.auth, err = server.NewAuth(server.AuthConfig{Policy: p, Tokens: ts}); err != nil {
		t.Fatal(err)
	}
	return c
}

// dial connects to a node as identity.
func (c *catalogCallers) dial(t *testing.T, node *env, identity string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(node.conn.Target(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(loopbackBearer(c.tokens[identity])))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// Two identities take tokens from two replicas sharing Vault. Nothing is
// listed until the replicas flush; their flushes (FlushIssuance), run at
// once, write their inboxes and both merge every shard's into one catalog
// with check-and-set, each batch once, which both replicas, the API and the
// CLI then show: per identity, the calls of both replicas added up, first seen
// the earliest and last seen the latest.
func TestConsumerCatalogAcrossReplicas(t *testing.T) {
	const (
		admin   = "catalog-admin"
		billing = "spiffe://rotavault.test/ns/billing/sa/invoicer"
		reports = "reports.rotavault.test"
	)
	callers := newCatalogCallers(t, `{"rules": [
		{"identity": "catalog-admin", "role": "admin"},
		{"identity": "spiffe://rotavault.test/ns/billing/sa/invoicer", "role": "consumer", "credentials": ["acme"]},
		{"identity": "reports.rotavault.test", "role": "consumer", "credentials": ["acme"]}
	]}`, admin, billing, reports)
	a := newEnv(t, envOptions{vault: vaulttest.StartDev(t), serverConfig: func(c *server.Config) { c.Auth = callers.auth }})
	b := a.replica()

	adminA := callers.dial(t, a, admin)
	installThrough(t, a, adminA, "acme")

	take := func(node *env, identity string, n int) {
		t.Helper()
		c := rotavaultv1.NewTokenVaultServiceClient(callers.dial(t, node, identity))
		for range n {
			if _, err := c.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"}); err != nil {
				t.Fatalf("%s: %v", identity, err)
			}
		}
	}
	list := func(node *env) map[string]*rotavaultv1.Consumer {
		t.Helper()
		resp, err := rotavaultv1.NewCredentialAdminServiceClient(callers.dial(t, node, admin)).ListConsumers(ctxT(t), &rotavaultv1.ListConsumersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		got := make(map[string]*rotavaultv1.Consumer)
		for _, c := range resp.GetConsumers() {
			if c.GetCredentialId() != "acme" {
				t.Fatalf("consumer of %s listed: %v", c.GetCredentialId(), c)
			}
			got[c.GetIdentity()] = c
		}
		return got
	}
	type want struct {
		count       uint64
		first, last [2]time.Time // bounds of first and last seen
	}
	check := func(node *env, wants map[string]want) map[string]*rotavaultv1.Consumer {
		t.Helper()
		got := list(node)
		if len(got) != len(wants) {
			t.Fatalf("catalog lists %d identities (%v), want %d", len(got), got, len(wants))
		}
		for id, w := range wants {
			c := got[id]
			first, last := c.GetFirstSeenTime().AsTime(), c.GetLastSeenTime().AsTime()
			switch {
			case c.GetTokenCount() != w.count:
				t.Errorf("%s: %d tokens, want %d", id, c.GetTokenCount(), w.count)
			case first.Before(w.first[0]) || first.After(w.first[1]):
				t.Errorf("%s: first seen %s, want within %s..%s", id, first, w.first[0], w.first[1])
			case last.Before(w.last[0]) || last.After(w.last[1]):
				t.Errorf("%s: last seen %s, want within %s..%s", id, last, w.last[0], w.last[1])
			}
		}
		return got
	}

	t0 := time.Now()
	take(a, billing, 6)
	t1 := time.Now()
	take(b, billing, 4)
	take(b, reports, 5)
	t2 := time.Now()
	if got := list(a); len(got) != 0 {
		t.Fatalf("consumers listed before any flush: %v", got)
	}

	// Both replicas flush at once: their merges of acme's inboxes race.
	var wg sync.WaitGroup
	for _, node := range []*env{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := node.srv.FlushIssuance(ctxT(t)); err != nil {
				t.Errorf("flush: %v", err)
			}
		}()
	}
	wg.Wait()
	// One replica created acme's catalog record; the other's listing of
	// the catalog folder shows another replica's creation within
	// ListRefresh ("Listing on Vault").
	awaitCondition(t, "both replicas list acme's catalog", func() bool { return len(list(a)) == 2 && len(list(b)) == 2 })
	wants := map[string]want{
		billing: {count: 10, first: [2]time.Time{t0, t1}, last: [2]time.Time{t1, t2}},
		reports: {count: 5, first: [2]time.Time{t1, t2}, last: [2]time.Time{t1, t2}},
	}
	check(a, wants)
	before := check(b, wants)

	// More calls on one replica: the count grows, first seen stays.
	t3 := time.Now()
	take(a, billing, 3)
	t4 := time.Now()
	if err := a.srv.FlushIssuance(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	firstSeen := before[billing].GetFirstSeenTime().AsTime()
	wants[billing] = want{count: 13, first: [2]time.Time{firstSeen, firstSeen}, last: [2]time.Time{t3, t4}}
	check(b, wants)

	t.Run("CLI", func(t *testing.T) {
		tokenFile := filepath.Join(t.TempDir(), "admin.token")
		if err := os.WriteFile(tokenFile, []byte(callers.tokens[admin]+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		run := func(args ...string) string {
			t.Helper()
			cmd := exec.Command(rotavaultBinary(t), append([]string{"consumers", "--server", b.conn.Target(), "--token-file", tokenFile}, args...)...)
			cmd.Env = os.Environ()
			out, err := cmd.Output()
			if err != nil {
				var stderr string
				if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
					stderr = string(ee.Stderr)
				}
				t.Fatalf("rotavault consumers %v: %v\n%s", args, err, stderr)
			}
			return string(out)
		}
		lines := strings.Split(strings.TrimSpace(run("--json")), "\n")
		if len(lines) != len(wants) {
			t.Fatalf("consumers --json printed %d lines, want %d:\n%s", len(lines), len(wants), strings.Join(lines, "\n"))
		}
		for _, line := range lines {
			var c rotavaultv1.Consumer
			if err := protojson.Unmarshal([]byte(line), &c); err != nil {
				t.Fatalf("consumers --json line %q: %v", line, err)
			}
			if w, ok := wants[c.GetIdentity()]; !ok || c.GetTokenCount() != w.count || c.GetCredentialId() != "acme" {
				t.Errorf("consumers --json: %v; want %d tokens of acme", &c, w.count)
			}
		}
		table := run("--credential", "acme")
		for id, w := range wants {
			if !strings.Contains(table, id) || !strings.Contains(table, fmt.Sprintf(" %d ", w.count)) {
				t.Errorf("the table lacks %s with %d tokens:\n%s", id, w.count, table)
			}
		}
	})
}

// With replicas on Vault the catalog fills itself, flush after flush, with
// no FlushIssuance: each replica's transport writes what it served to its
// inboxes every interval, and the replica holding acme's duty shard merges
// all of them. The counts add up exactly across the three replicas, for a
// new consumer and for the later uses of a known one (merged once per
// period of ten intervals).
func TestConsumerCatalogMergedByTheShardHolder(t *testing.T) {
	const (
		admin    = "catalog-admin"
		billing  = "spiffe://rotavault.test/ns/billing/sa/invoicer"
		interval = 200 * time.Millisecond
	)
	callers := newCatalogCallers(t, `{"rules": [
		{"identity": "catalog-admin", "role": "admin"},
		{"identity": "spiffe://rotavault.test/ns/billing/sa/invoicer", "role": "consumer", "credentials": ["acme"]}
	]}`, admin, billing)
	a := newEnv(t, envOptions{vault: vaulttest.StartDev(t), brokerOpts: []option.Option{option.WithDutyLeasePeriod(time.Second)},
		serverConfig: func(c *server.Config) { c.Auth = callers.auth; c.IssuanceFlushInterval = interval }})
	nodes := []*env{a, a.replica(), a.replica()}
	adminA := callers.dial(t, a, admin)
	installThrough(t, a, adminA, "acme")
	taken := uint64(0)
	take := func(rounds int) {
		t.Helper()
		for _, node := range nodes {
			c := rotavaultv1.NewTokenVaultServiceClient(callers.dial(t, node, billing))
			for range rounds {
				if _, err := c.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"}); err != nil {
					t.Fatal(err)
				}
				taken++
			}
		}
	}
	listed := func() uint64 {
		resp, err := rotavaultv1.NewCredentialAdminServiceClient(adminA).ListConsumers(ctxT(t), &rotavaultv1.ListConsumersRequest{CredentialId: "acme"})
		if err != nil || len(resp.GetConsumers()) != 1 {
			return 0
		}
		return resp.GetConsumers()[0].GetTokenCount()
	}
	take(3)
	awaitCondition(t, "the new consumer listed with every replica's tokens", func() bool { return listed() == taken })
	take(4) // a known consumer now: merged at the credential's merge point
	// Exact equality: a batch merged twice would overshoot and never match.
	awaitCondition(t, "the known consumer's later tokens listed", func() bool { return listed() == taken })
	var inbox, merges int64
	for i, node := range nodes {
		s := node.broker.Stats().Catalog
		t.Logf("replica %d: %d inbox batches written, %d catalog records merged", i, s.InboxWrites, s.Merges)
		if s.InboxWrites == 0 {
			t.Errorf("replica %d wrote no inbox batch", i)
		}
		inbox, merges = inbox+s.InboxWrites, merges+s.Merges
	}
	if merges == 0 || merges > inbox {
		t.Errorf("%d catalog records merged from %d batches", merges, inbox)
	}
}

// installThrough creates credential id at e's simulator and imports a
// refresh token into it, through conn (an admin's connection where the
// server has a policy).
func installThrough(t *testing.T, e *env, conn grpc.ClientConnInterface, id string) {
	t.Helper()
	if _, err := rotavaultv1.NewCredentialAdminServiceClient(conn).CreateCredential(ctxT(t), &rotavaultv1.CreateCredentialRequest{CredentialId: id, Spec: e.salesforceSpec()}); err != nil {
		t.Fatal(err)
	}
	rt, err := e.sim.IssueRefreshToken(simClientID, []string{"api", "refresh_token"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rotavaultv1.NewTokenVaultServiceClient(conn).Reauthenticate(ctxT(t), &rotavaultv1.ReauthenticateRequest{CredentialId: id,
		Flow: &rotavaultv1.ReauthenticateRequest_RefreshTokenImport{RefreshTokenImport: &rotavaultv1.RefreshTokenImport{RefreshToken: rt}}}); err != nil {
		t.Fatal(err)
	}
}
