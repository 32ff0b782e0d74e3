package vaultstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/rotavault/rotavault/internal/ctxwait"
)

// Failover timing: how long a request waits, in all, for some node to take
// it while every node refuses (an election in progress), and the pauses
// between rounds over the nodes. A raft election with
// performance_multiplier = 1 and the new active node's set-up take a few
// seconds; a cluster that stays without an active node longer than
// maxFailoverWait is down, and the caller should hear so.
const (
	maxFailoverWait  = 20 * time.Second
	failoverPauseMin = 50 * time.Millisecond
	failoverPauseMax = 500 * time.Millisecond
)

// nodeTransport sends every request meant for one of a Vault cluster's
// nodes to the node it currently prefers, and moves to another node when
// that one cannot have processed the request: the connection was refused
// (the node is down), or the node answered 503 (sealed, or a standby that
// knows no active node during an election). vault/api takes one address;
// the cluster is this transport's business.
//
// A request whose outcome is unknown — the connection broke after the
// request was sent, which is what an active node killed mid-write looks
// like — is never sent again here unless it is a read: a check-and-set
// write that may have been applied is reported to the caller as failed,
// and only the caller, after re-reading, may decide to write again (the
// broker's putFamily does exactly that). The node is still changed, so
// the next request goes elsewhere.
//
// A standby answering 307 (request forwarding failed; it names the node
// it believes active, which during an election is the dead one) is
// handled here, never passed on: a read goes on to the next node, a write
// too when the named node refused our connection already (it was dead
// before the standby could forward to it), and otherwise fails as an
// unknown outcome (errForwardingFailed).
//
// Safe for concurrent use.
type nodeTransport struct {
	base  http.RoundTripper
	nodes []*url.URL
	log   *slog.Logger

	cur     atomic.Int32 // index into nodes of the preferred node
	changes atomic.Int64 // how often the preferred node changed

	mu sync.Mutex // serialises changes of cur, so that each is logged once
}

// newNodeTransport parses the node addresses (http[s]://host:port).
func newNodeTransport(base http.RoundTripper, addrs []string, log *slog.Logger) (*nodeTransport, error) {
	if len(addrs) == 0 {
		return nil, errors.New("vaultstore: no Vault node addresses")
	}
	t := &nodeTransport{base: base, log: log}
	seen := make(map[string]bool)
	for _, a := range addrs {
		u, err := url.Parse(strings.TrimSpace(a))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return nil, fmt.Errorf("vaultstore: Vault node address %q: want http(s)://host:port", a)
		}
		u = &url.URL{Scheme: u.Scheme, Host: u.Host}
		if seen[u.String()] {
			return nil, fmt.Errorf("vaultstore: Vault node address %q given twice", a)
		}
		seen[u.String()] = true
		t.nodes = append(t.nodes, u)
	}
	return t, nil
}

// node returns the index of the node u names, or -1.
func (t *nodeTransport) node(u *url.URL) int {
	for i, n := range t.nodes {
		if strings.EqualFold(n.Scheme, u.Scheme) && strings.EqualFold(n.Host, u.Host) {
			return i
		}
	}
	return -1
}

// prefer makes node i the preferred one, if the preferred one is still
// from; it counts and logs a change.
func (t *nodeTransport) prefer(ctx context.Context, from, i int, why string) {
	if from == i {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.cur.CompareAndSwap(int32(from), int32(i)) {
		return // another request moved it already
	}
	t.changes.Add(1)
	t.log.InfoContext(ctx, "using another Vault node", "from", t.nodes[from].String(), "to", t.nodes[i].String(), "why", why)
}

// verdict is what a node's answer (or its absence) says about a request.
type verdict int

const (
	// answered: the node processed the request (whatever it answered).
	answered verdict = iota
	// notProcessed: the node cannot have processed it; another node may.
	notProcessed
	// unknownOutcome: the request was sent and may have been processed.
	unknownOutcome
	// redirected: a standby could not forward the request and names the
	// node it believes active. The forwarding may have failed after the
	// active node received the request (it died meanwhile), so for a write
	// this is an unknown outcome, unless the named node refused our own
	// connection before (then it was dead before the standby could
	// forward to it, and nothing was applied).
	redirected
)

// classify is the one place that tells what a round trip's result means
// for failover.
func classify(resp *http.Response, err error) (verdict, string) {
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return notProcessed, "unreachable"
		}
		return unknownOutcome, "connection lost"
	}
	switch resp.StatusCode {
	case http.StatusServiceUnavailable:
		// Sealed, or a standby without an active node to forward to:
		// Vault answers 503 before handling the request.
		return notProcessed, "sealed or without an active node"
	case http.StatusTemporaryRedirect, http.StatusFound, http.StatusMovedPermanently:
		return redirected, "a standby could not forward to the active node"
	}
	return answered, ""
}

// errForwardingFailed is returned for a write a standby could not forward,
// when it may have reached the active node: its outcome is unknown, and
// the caller must re-read before writing again.
var errForwardingFailed = errors.New("vaultstore: a standby could not forward the write to the active node; it may have been applied")

// idempotent: requests that can be sent again whatever became of the first
// attempt (vault/api lists with the LIST method).
func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, "LIST":
		return true
	}
	return false
}

// RoundTrip implements http.RoundTripper.
func (t *nodeTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.node(req.URL) < 0 {
		return t.base.RoundTrip(req) // not addressed to the cluster
	}
	ctx := req.Context()
	// The body is needed once per attempt. Vault requests are small (a
	// record is at most a few hundred KiB); read it once.
	var body []byte
	if req.Body != nil && req.Body != http.NoBody {
		var err error
		body, err = io.ReadAll(req.Body)
		_ = req.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("vaultstore: reading the request body: %w", err)
		}
	}
	deadline := time.Now().Add(maxFailoverWait)
	pause := failoverPauseMin
	refused := make([]bool, len(t.nodes)) // nodes that refused a connection
	for {
		start := int(t.cur.Load())
		var (
			lastResp *http.Response
			lastErr  error
			lastWhy  string
		)
		for k := range t.nodes {
			i := (start + k) % len(t.nodes)
			resp, err := t.base.RoundTrip(t.attempt(req, t.nodes[i], body))
			v, why := classify(resp, err)
			switch v {
			case answered:
				t.prefer(ctx, start, i, lastWhy)
				return resp, nil
			case notProcessed:
				refused[i] = refused[i] || err != nil
			case unknownOutcome:
				if !idempotent(req.Method) {
					t.prefer(ctx, start, (i+1)%len(t.nodes), why)
					return nil, err
				}
			case redirected:
				// vault/api must never see the redirect: it would follow
				// it once, past this transport's choice, and read a second
				// one as an empty answer ("secret not found").
				loc := -1
				if u, lerr := resp.Location(); lerr == nil {
					loc = t.node(u)
				}
				if !idempotent(req.Method) && (loc < 0 || !refused[loc]) {
					discard(resp)
					if loc >= 0 {
						t.prefer(ctx, start, loc, why)
					}
					return nil, errForwardingFailed
				}
				discard(resp)
				resp, err = nil, errors.New("vaultstore: "+why)
			}
			if lastResp != nil {
				discard(lastResp)
			}
			lastResp, lastErr, lastWhy = resp, err, why
			if ctx.Err() != nil {
				break
			}
		}
		if ctx.Err() != nil || time.Now().Add(pause).After(deadline) {
			// Every node refused for too long: the cluster is down, or
			// the caller gave up. Its last answer is the caller's (a
			// 503, or the last error).
			if lastResp != nil {
				return lastResp, nil
			}
			return nil, lastErr
		}
		discard(lastResp)
		// Every node refused: an election, most likely. Wait and go round.
		if err := ctxwait.Sleep(ctx, pause); err != nil {
			return nil, err
		}
		pause = min(2*pause, failoverPauseMax)
	}
}

// discard drains and closes an answer that is not passed on, so that its
// connection can be reused.
func discard(resp *http.Response) {
	if resp == nil {
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
}

// attempt is req addressed to node, with a fresh copy of body.
func (t *nodeTransport) attempt(req *http.Request, node *url.URL, body []byte) *http.Request {
	r := req.Clone(req.Context())
	r.URL.Scheme, r.URL.Host, r.Host = node.Scheme, node.Host, ""
	if body != nil {
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		r.ContentLength = int64(len(body))
	}
	return r
}

// clusterClient returns a client like c whose requests go through a
// nodeTransport over addrs; c itself is left as it was.
func clusterClient(c *vault.Client, addrs []string, log *slog.Logger) (*vault.Client, *nodeTransport, error) {
	cfg := c.CloneConfig()
	hc := *cfg.HttpClient
	base := hc.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	nt, err := newNodeTransport(base, addrs, log)
	if err != nil {
		return nil, nil, err
	}
	hc.Transport = nt
	cfg.HttpClient = &hc
	cfg.Address = nt.nodes[0].String()
	nc, err := vault.NewClient(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("vaultstore: Vault client: %w", err)
	}
	nc.SetHeaders(c.Headers())
	nc.SetToken(c.Token())
	return nc, nt, nil
}
