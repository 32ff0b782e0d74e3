package vaulttest

import (
	"net/http"
	"strings"
	"sync"
	"testing"

	vault "github.com/hashicorp/vault/api"
)

// Requests counts the HTTP requests a client sends Vault, by kind: the
// method (LIST for a list) and the part of the KV v2 API addressed ("data",
// "metadata", "config"; "other" for the rest). It is what a store operation
// costs Vault, which counting store operations does not show (a record's
// creation may take a metadata write besides its data write).
type Requests struct {
	next   http.RoundTripper
	mu     sync.Mutex
	byKind map[string]int64
}

func (c *Requests) RoundTrip(r *http.Request) (*http.Response, error) {
	method := r.Method
	if method == "LIST" || r.URL.Query().Get("list") == "true" {
		method = "LIST"
	}
	part := "other"
	// /v1/MOUNT/PART/...
	if f := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/v1/"), "/", 3); len(f) >= 2 {
		switch f[1] {
		case "data", "metadata", "config":
			part = f[1]
		}
	}
	c.mu.Lock()
	if c.byKind == nil {
		c.byKind = map[string]int64{}
	}
	c.byKind[method+" "+part]++
	c.mu.Unlock()
	return c.next.RoundTrip(r)
}

// ByKind is a copy of the counts so far.
func (c *Requests) ByKind() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[string]int64, len(c.byKind))
	for k, v := range c.byKind {
		m[k] = v
	}
	return m
}

// Count is the number of requests of the given kinds ("LIST data", "PUT
// metadata"…); none named: of every kind.
func (c *Requests) Count(kinds ...string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for k, v := range c.byKind {
		if len(kinds) == 0 {
			n += v
			continue
		}
		for _, want := range kinds {
			if k == want {
				n += v
			}
		}
	}
	return n
}

// KVWrites is the number of requests that write (PUT, POST, DELETE) a
// KV record's data or metadata.
func (c *Requests) KVWrites() int64 {
	var kinds []string
	for _, method := range []string{http.MethodPut, http.MethodPost, http.MethodDelete} {
		kinds = append(kinds, method+" data", method+" metadata")
	}
	return c.Count(kinds...)
}

// KVReads is the number of reads (GET) of a KV record's data or metadata.
func (c *Requests) KVReads() int64 {
	return c.Count(http.MethodGet+" data", http.MethodGet+" metadata")
}

// CountingClient is Client(t) with its requests counted.
func (s *Server) CountingClient(t testing.TB) (*vault.Client, *Requests) {
	t.Helper()
	base := s.Client(t)
	cfg := base.CloneConfig()
	hc := *cfg.HttpClient
	counter := &Requests{next: hc.Transport}
	hc.Transport = counter
	cfg.HttpClient = &hc
	c, err := vault.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(base.Token())
	return c, counter
}
