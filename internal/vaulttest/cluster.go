package vaulttest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// Cluster is a Vault cluster on loopback, set up as regulated users run
// Vault: integrated storage (raft) on every node, Shamir with one key, no
// TLS (loopback only), request forwarding from standbys to the active node.
// Every node holds the same tokens and provisioning as a single Server (see
// Server). Not safe for concurrent Kill/Restart of the same node.
type Cluster struct {
	// Nodes are the cluster's servers, in the order they were started;
	// Nodes[0] was initialised and was the first active node.
	Nodes []*Server
	// RootToken, Token and TransitToken are as on Server, valid on every
	// node.
	RootToken, Token, TransitToken string

	t         testing.TB
	unsealKey string
}

// clusterEnv is added to each node's environment. Autopilot is off so that
// a joining node is a voter at once: with it, nodes join as non-voters and
// are promoted only after its stabilisation time and reconcile interval
// (10 s each by default), and a test killing the active node before then
// would kill the quorum with it, which is not the failure under test.
var clusterEnv = []string{"VAULT_RAFT_AUTOPILOT_DISABLE=true"}

// StartCluster starts n `vault server` processes with raft storage, joins
// them into one cluster, unseals every node, mounts KV v2 at secret/ and
// provisions the cluster as StartDev does (policies, Transit key, tokens).
// It returns once every node is a voter and every standby knows the active
// node; the processes are killed when the test ends.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("vaulttest: a cluster of %d nodes", n)
	}
	c := &Cluster{t: t}
	began := time.Now()
	dir := t.TempDir()
	for i := range n {
		c.Nodes = append(c.Nodes, newClusterNode(t, dir, i))
	}
	// Start every process at once: most of a node's start-up is its own.
	for _, s := range c.Nodes {
		s.launch(clusterEnv...)
		t.Cleanup(s.Stop)
	}
	first := c.Nodes[0]
	fc, err := first.newClient()
	if err != nil {
		t.Fatal(err)
	}
	fc.ClearToken()
	if err := first.awaitUp(fc); err != nil {
		t.Fatalf("%v\nvault output:\n%s", err, first.logs)
	}
	init, err := fc.Sys().Init(&vault.InitRequest{SecretShares: 1, SecretThreshold: 1})
	if err != nil {
		t.Fatalf("vaulttest: init: %v\nvault output:\n%s", err, first.logs)
	}
	c.RootToken, c.unsealKey = init.RootToken, init.Keys[0]
	for _, s := range c.Nodes {
		s.RootToken, s.unsealKey = c.RootToken, c.unsealKey
	}
	first.unseal()
	if _, err := c.awaitActive(); err != nil {
		t.Fatal(err)
	}
	for _, s := range c.Nodes[1:] {
		c.join(s, first)
	}
	if err := c.awaitFormed(); err != nil {
		t.Fatal(err)
	}
	root := first.RootClient(t)
	if err := root.Sys().Mount("secret", &vault.MountInput{Type: "kv", Options: map[string]string{"version": "2"}}); err != nil {
		t.Fatalf("vaulttest: enable kv-v2: %v", err)
	}
	first.awaitKVWrites(t, root)
	first.provision(t)
	c.Token, c.TransitToken = first.Token, first.TransitToken
	for _, s := range c.Nodes {
		s.Token, s.TransitToken = c.Token, c.TransitToken
	}
	t.Logf("vaulttest: a cluster of %d nodes up in %s", n, time.Since(began).Round(time.Millisecond))
	return c
}

// newClusterNode writes node i's configuration under dir; the process is
// not started.
func newClusterNode(t testing.TB, dir string, i int) *Server {
	api, cluster := freeAddr(t), freeAddr(t)
	nodeDir := filepath.Join(dir, fmt.Sprintf("node%d", i))
	if err := os.MkdirAll(filepath.Join(nodeDir, "raft"), 0o700); err != nil {
		t.Fatal(err)
	}
	// performance_multiplier = 1 is raft's tightest timing (1 s heartbeat
	// and election timeouts), what production clusters on a good network
	// use; Vault's default (5) makes an election five times slower.
	hcl := fmt.Sprintf(`storage "raft" {
  path                   = %q
  node_id                = "node%d"
  performance_multiplier = 1
}
listener "tcp" {
  address         = %q
  cluster_address = %q
  tls_disable     = true
}
api_addr      = "http://%s"
cluster_addr  = "https://%s"
disable_mlock = true
`, filepath.Join(nodeDir, "raft"), i, api, cluster, api, cluster)
	config := filepath.Join(nodeDir, "vault.hcl")
	if err := os.WriteFile(config, []byte(hcl), 0o600); err != nil {
		t.Fatal(err)
	}
	return &Server{Addr: "http://" + api, t: t, args: []string{"server", "-config=" + config}}
}

// join makes s join the cluster through leader and unseals it. With Shamir
// seals the join completes only at unseal: the new node must decrypt the
// leader's challenge with the keyring the unseal key opens.
func (c *Cluster) join(s, leader *Server) {
	c.t.Helper()
	sc, err := s.newClient()
	if err != nil {
		c.t.Fatal(err)
	}
	sc.ClearToken()
	if err := s.awaitUp(sc); err != nil {
		c.t.Fatalf("%v\nvault output:\n%s", err, s.logs)
	}
	if _, err := sc.Sys().RaftJoin(&vault.RaftJoinRequest{LeaderAPIAddr: leader.Addr}); err != nil {
		c.t.Fatalf("vaulttest: %s joining %s: %v\nvault output:\n%s", s.Addr, leader.Addr, err, s.logs)
	}
	if err := s.poll("unsealed after joining", func(ctx context.Context) error {
		st, err := sc.Sys().UnsealWithContext(ctx, c.unsealKey)
		if err == nil && st.Sealed {
			err = errors.New("still sealed")
		}
		return err
	}); err != nil {
		c.t.Fatalf("%v\nvault output:\n%s", err, s.logs)
	}
}

// Addrs are the nodes' API addresses (http://127.0.0.1:PORT), what a
// Rotavault replica is given.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, s := range c.Nodes {
		addrs[i] = s.Addr
	}
	return addrs
}

// Client returns a client of the first node authenticated with Token (the
// Rotavault policy only).
func (c *Cluster) Client(t testing.TB) *vault.Client {
	t.Helper()
	return c.Nodes[0].Client(t)
}

// Active waits until one running node is the active node, and returns it.
func (c *Cluster) Active() *Server {
	c.t.Helper()
	s, err := c.awaitActive()
	if err != nil {
		c.t.Fatal(err)
	}
	return s
}

// Kill sends SIGKILL to node s and waits for it: a crash, no step-down.
func (c *Cluster) Kill(s *Server) { s.Stop() }

// Restart starts a killed node again on its port and storage and unseals
// it; it rejoins the cluster from its own raft state. It returns once the
// node serves as a standby or as the active node.
func (c *Cluster) Restart(s *Server) {
	c.t.Helper()
	s.launch(clusterEnv...)
	s.unseal()
}

// awaitActive polls the running nodes until one reports itself active.
func (c *Cluster) awaitActive() (*Server, error) {
	var active *Server
	err := c.Nodes[0].pollCluster("with an active node", func(ctx context.Context) error {
		var states []string
		for _, s := range c.Nodes {
			h, err := s.health(ctx)
			switch {
			case err != nil:
				states = append(states, s.Addr+": "+err.Error())
			case !h.Sealed && !h.Standby:
				active = s
				return nil
			default:
				states = append(states, fmt.Sprintf("%s: sealed=%v standby=%v", s.Addr, h.Sealed, h.Standby))
			}
		}
		return errors.New(strings.Join(states, "; "))
	})
	return active, err
}

// awaitFormed polls until the raft configuration lists every node as a
// voter and every node is unsealed and knows the active node (so a
// standby forwards rather than answering 503).
func (c *Cluster) awaitFormed() error {
	return c.Nodes[0].pollCluster("formed", func(ctx context.Context) error {
		active, err := c.awaitActiveOnce(ctx)
		if err != nil {
			return err
		}
		root, err := active.newClient()
		if err != nil {
			return err
		}
		root.SetToken(c.RootToken)
		cfg, err := root.Logical().ReadWithContext(ctx, "sys/storage/raft/configuration")
		if err != nil || cfg == nil {
			return fmt.Errorf("raft configuration: %v", err)
		}
		conf, _ := cfg.Data["config"].(map[string]any)
		servers, _ := conf["servers"].([]any)
		voters := 0
		for _, raw := range servers {
			if srv, _ := raw.(map[string]any); srv["voter"] == true {
				voters++
			}
		}
		if voters != len(c.Nodes) {
			return fmt.Errorf("%d of %d nodes are voters", voters, len(c.Nodes))
		}
		for _, s := range c.Nodes {
			sc, err := s.newClient()
			if err != nil {
				return err
			}
			l, err := sc.Sys().LeaderWithContext(ctx)
			if err != nil {
				return fmt.Errorf("%s: %w", s.Addr, err)
			}
			if l.LeaderAddress != active.Addr {
				return fmt.Errorf("%s sees the leader at %q, not %s", s.Addr, l.LeaderAddress, active.Addr)
			}
		}
		return nil
	})
}

// awaitActiveOnce is one round of awaitActive.
func (c *Cluster) awaitActiveOnce(ctx context.Context) (*Server, error) {
	for _, s := range c.Nodes {
		if h, err := s.health(ctx); err == nil && !h.Sealed && !h.Standby {
			return s, nil
		}
	}
	return nil, errors.New("no active node")
}

// health asks one node for its state, without a token.
func (s *Server) health(ctx context.Context) (*vault.HealthResponse, error) {
	select {
	case <-s.exited:
		return nil, errors.New("not running")
	default:
	}
	c, err := s.newClient()
	if err != nil {
		return nil, err
	}
	c.ClearToken()
	return c.Sys().HealthWithContext(ctx)
}

// pollCluster is poll without giving up when s itself has exited: the
// cluster's state is asked of every node, and s may be the one killed.
func (s *Server) pollCluster(what string, try func(ctx context.Context) error) error {
	survivor := &Server{exited: make(chan struct{})}
	return survivor.poll(what, try)
}
