package server

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/rotavault/rotavault/boltstore"
	"github.com/rotavault/rotavault/broker"
	"github.com/rotavault/rotavault/broker/catalog"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/option"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/store"
)

// countingStore counts writes and deletes, and can refuse writes of the
// consumer catalog, around a real store.
type countingStore struct {
	store.Store
	puts, deletes atomic.Int64
	failCatalog   atomic.Bool
}

var _ store.Store = (*countingStore)(nil)

func (s *countingStore) Put(ctx context.Context, key string, value []byte, expected uint64) (uint64, error) {
	s.puts.Add(1)
	if s.failCatalog.Load() && strings.HasPrefix(key, "consumers/") {
		return 0, errors.New("countingstore: catalog write refused by the test")
	}
	return s.Store.Put(ctx, key, value, expected)
}

func (s *countingStore) Delete(ctx context.Context, key string) error {
	s.deletes.Add(1)
	return s.Store.Delete(ctx, key)
}

func (s *countingStore) writes() int64 { return s.puts.Load() + s.deletes.Load() }

// catalogEnv is an open server (every caller DevIdentity/peer:HOST:PORT)
// with the consumer catalog and issuance summaries on, over the embedded
// store, and the Salesforce simulator.
type catalogEnv struct {
	t       *testing.T
	store   *countingStore
	broker  *broker.Broker
	srv     *Server
	auditor *recordingAuditor
	sim     *providersim.Server
	addr    string
	admin   rotavaultv1.CredentialAdminServiceClient
}

func newCatalogEnv(t *testing.T) *catalogEnv {
	t.Helper()
	return newCatalogEnvWith(t, func(*Config) {})
}

// newCatalogEnvWith is newCatalogEnv with the server's Config adjusted by
// configure before the server starts.
func newCatalogEnvWith(t *testing.T, configure func(*Config)) *catalogEnv {
	t.Helper()
	dir := t.TempDir()
	key, err := boltstore.GenerateKeyFile(filepath.Join(dir, "store.key"))
	if err != nil {
		t.Fatal(err)
	}
	bs, err := boltstore.Open(filepath.Join(dir, "rotavault.db"), key, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := &catalogEnv{t: t, store: &countingStore{Store: bs}, auditor: &recordingAuditor{}}
	sim, err := providersim.Start(providersim.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	sim.AddClient(providersim.Client{ID: simClient, Secret: simSecret})
	e.sim = sim
	b, err := broker.New(context.Background(), broker.Config{Store: e.store, Provider: provider.New(nil), Auditor: e.auditor},
		option.WithSchedulerInterval(time.Hour), option.WithExclusiveStore()) // the embedded store, as serve runs it
	if err != nil {
		t.Fatal(err)
	}
	e.broker = b
	// An hour: only FlushIssuance (and Shutdown) flush in these tests.
	cfg := Config{Broker: b, Credentials: b.Credentials(), Flows: b.Flows(), Catalog: b.Catalog(), Auditor: e.auditor, ConsumerCatalog: true, IssuanceFlushInterval: time.Hour,
		RateLimit: RateLimit{Disabled: true}}
	configure(&cfg)
	e.srv = New(cfg)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = lis.Addr().String()
	served := make(chan struct{})
	go func() { defer close(served); _ = e.srv.GRPC.Serve(lis) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.srv.Shutdown(ctx)
		<-served
		_ = b.Close()
		_ = bs.Close()
	})
	e.admin = rotavaultv1.NewCredentialAdminServiceClient(e.dial())
	return e
}

// dial opens a new connection: another source port, the same host.
func (e *catalogEnv) dial() *grpc.ClientConn {
	e.t.Helper()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// install creates a credential with an active family.
func (e *catalogEnv) install(id string) {
	e.t.Helper()
	ctx := testCtx(e.t)
	if _, err := e.broker.Credentials().Create(ctx, id, credspec.Spec{ProviderKind: credspec.ProviderSalesforce, BaseURL: e.sim.URL(),
		ClientID: simClient, ClientSecret: simSecret, Scopes: []string{"api", "refresh_token"}, AccessTokenLife: time.Hour}); err != nil {
		e.t.Fatal(err)
	}
	e.importToken(id)
}

// importToken gives id a refresh token through the broker (no RPC) and
// returns it.
func (e *catalogEnv) importToken(id string) string {
	e.t.Helper()
	rt, err := e.sim.IssueRefreshToken(simClient, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.broker.ImportRefreshToken(testCtx(e.t), id, rt); err != nil {
		e.t.Fatal(err)
	}
	return rt
}

func (e *catalogEnv) getTokens(conn *grpc.ClientConn, id string, n int) {
	e.t.Helper()
	c := rotavaultv1.NewTokenVaultServiceClient(conn)
	for range n {
		if _, err := c.GetAccessToken(testCtx(e.t), &rotavaultv1.GetAccessTokenRequest{CredentialId: id}); err != nil {
			e.t.Fatalf("GetAccessToken %s: %v", id, err)
		}
	}
}

func (e *catalogEnv) list(req *rotavaultv1.ListConsumersRequest) *rotavaultv1.ListConsumersResponse {
	e.t.Helper()
	resp, err := e.admin.ListConsumers(testCtx(e.t), req)
	if err != nil {
		e.t.Fatalf("ListConsumers(%v): %v", req, err)
	}
	return resp
}

// The hot path writes nothing: N cached GetAccessToken calls leave the
// store's write count where it was. One flush then writes the catalog (one
// record per credential) and ListConsumers shows every call, by identity;
// the audit trail gets its summaries from the same aggregates.
func TestConsumerCatalogNoStoreWritePerCall(t *testing.T) {
	e := newCatalogEnv(t)
	e.install("cred-a")
	e.install("cred-b")
	first, second := e.dial(), e.dial()
	before := time.Now()
	// Each credential's first GetAccessToken may still refresh or re-read;
	// every later one is served from the cache.
	e.getTokens(first, "cred-a", 1)
	e.getTokens(second, "cred-b", 1)
	refreshes := e.sim.Stats().RefreshRequests
	writes := e.store.writes()
	const n = 200
	e.getTokens(first, "cred-a", n)
	e.getTokens(second, "cred-a", n/2)
	e.getTokens(second, "cred-b", n/4)
	after := time.Now()
	if got := e.sim.Stats().RefreshRequests - refreshes; got != 0 {
		t.Fatalf("%d refreshes during the calls: they were not on the cached path", got)
	}
	if got := e.store.writes() - writes; got != 0 {
		t.Fatalf("%d store writes during %d cached GetAccessToken calls, want 0", got, n+n/2+n/4)
	}
	if got := e.list(&rotavaultv1.ListConsumersRequest{}).GetConsumers(); len(got) != 0 {
		t.Fatalf("consumers listed before any flush: %v", got)
	}

	writes = e.store.writes()
	if err := e.srv.FlushIssuance(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if got := e.store.writes() - writes; got != 2 {
		t.Errorf("the flush made %d store writes, want 2 (one catalog record per credential)", got)
	}
	got := e.list(&rotavaultv1.ListConsumersRequest{}).GetConsumers()
	// Two connections from one host are one consumer on an open server.
	const identity = DevIdentity + "/peer:127.0.0.1"
	want := map[string]uint64{"cred-a": 1 + n + n/2, "cred-b": 1 + n/4}
	if len(got) != len(want) {
		t.Fatalf("listed %v; want one consumer of each credential", got)
	}
	for _, c := range got {
		if c.GetIdentity() != identity || c.GetTokenCount() != want[c.GetCredentialId()] {
			t.Errorf("consumer %v; want %s with %d tokens", c, identity, want[c.GetCredentialId()])
		}
		first, last := c.GetFirstSeenTime().AsTime(), c.GetLastSeenTime().AsTime()
		if first.Before(before) || last.After(after) || last.Before(first) {
			t.Errorf("%s seen %s..%s, outside the calls' %s..%s", c.GetCredentialId(), first, last, before, after)
		}
	}
	// The audit trail summarised the same calls, per connection.
	var audited uint64
	for _, ev := range e.auditor.issued() {
		var count uint64
		if _, err := fmt.Sscanf(ev.Detail, "count=%d", &count); err != nil {
			t.Fatalf("summary detail %q: %v", ev.Detail, err)
		}
		audited += count
	}
	if audited != want["cred-a"]+want["cred-b"] {
		t.Errorf("the audit summaries count %d tokens, the catalog %d", audited, want["cred-a"]+want["cred-b"])
	}
}

// A catalog write that fails keeps its counts for the next flush; the audit
// summaries, written the first time, are not written again.
func TestConsumerCatalogFlushRetriesWhatFailed(t *testing.T) {
	e := newCatalogEnv(t)
	e.install("cred-a")
	conn := e.dial()
	e.getTokens(conn, "cred-a", 5)
	e.store.failCatalog.Store(true)
	if err := e.srv.FlushIssuance(testCtx(t)); err == nil {
		t.Fatal("FlushIssuance reported success with the catalog write failing")
	}
	summaries := len(e.auditor.issued())
	if summaries == 0 {
		t.Fatal("a failing catalog kept the audit summary from being written")
	}
	e.store.failCatalog.Store(false)
	e.getTokens(conn, "cred-a", 2)
	if err := e.srv.FlushIssuance(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	got := e.list(&rotavaultv1.ListConsumersRequest{CredentialId: "cred-a"}).GetConsumers()
	if len(got) != 1 || got[0].GetTokenCount() != 7 {
		t.Fatalf("catalog after the retry: %v; want 7 tokens", got)
	}
	if n := len(e.auditor.issued()); n != summaries+1 {
		t.Fatalf("%d audit summaries after the second flush, want %d: the first interval's was written again", n, summaries+1)
	}
}

// Flushes running while calls are being counted, and concurrently with
// each other, lose no call and count none twice.
func TestFlushIssuanceConcurrentCalls(t *testing.T) {
	e := newCatalogEnv(t)
	e.install("cred-a")
	var wg sync.WaitGroup
	for range 4 {
		conn := e.dial()
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := rotavaultv1.NewTokenVaultServiceClient(conn)
			for range 25 {
				if _, err := c.GetAccessToken(testCtx(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "cred-a"}); err != nil {
					t.Error(err)
					return
				}
				if err := e.srv.FlushIssuance(testCtx(t)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	got := e.list(&rotavaultv1.ListConsumersRequest{}).GetConsumers()
	if len(got) != 1 || got[0].GetTokenCount() != 100 {
		t.Fatalf("catalog %v; want one consumer with 100 tokens", got)
	}
}

func TestListConsumersPaging(t *testing.T) {
	e := newCatalogEnv(t)
	now := time.Now()
	var uses []catalog.Use
	var want []string
	for _, cred := range []string{"cred-a", "cred-b", "cred-c"} {
		e.install(cred)
		for _, id := range []string{"spiffe://rotavault.test/ns/b/sa/x", "a.rotavault.test", "spiffe://rotavault.test/ns/a/sa/y"} {
			uses = append(uses, catalog.Use{CredentialID: cred, Identity: id, FirstSeen: now, LastSeen: now, Count: 1})
		}
		want = append(want, cred+" a.rotavault.test", cred+" spiffe://rotavault.test/ns/a/sa/y", cred+" spiffe://rotavault.test/ns/b/sa/x")
	}
	if left, err := e.broker.Catalog().Record(testCtx(t), uses); err != nil || len(left) != 0 {
		t.Fatalf("RecordConsumers: %v (%d left)", err, len(left))
	}
	pages := func(req *rotavaultv1.ListConsumersRequest) ([]string, int) {
		t.Helper()
		var got []string
		for n := 1; n <= 20; n++ {
			resp := e.list(req)
			if size := int(req.GetPageSize()); size > 0 && len(resp.GetConsumers()) > size {
				t.Fatalf("page of %d for page_size %d", len(resp.GetConsumers()), size)
			}
			for _, c := range resp.GetConsumers() {
				got = append(got, c.GetCredentialId()+" "+c.GetIdentity())
			}
			if resp.GetNextPageToken() == "" {
				return got, n
			}
			req.PageToken = resp.GetNextPageToken()
		}
		t.Fatal("more than 20 pages")
		return nil, 0
	}
	for _, size := range []int32{0, 1, 2, 4, 9, 1000} {
		got, n := pages(&rotavaultv1.ListConsumersRequest{PageSize: size})
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("page_size %d listed\n%s\nwant\n%s", size, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if size == 2 && n != 5 {
			t.Errorf("page_size 2: %d pages for 9 consumers, want 5", n)
		}
	}
	got, _ := pages(&rotavaultv1.ListConsumersRequest{CredentialId: "cred-b", PageSize: 2})
	if strings.Join(got, "\n") != strings.Join(want[3:6], "\n") {
		t.Errorf("cred-b's consumers:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want[3:6], "\n"))
	}
}

// Bad requests get INVALID_ARGUMENT naming the field (NOT_FOUND for an
// unknown credential) and change nothing.
func TestListConsumersValidation(t *testing.T) {
	e := newCatalogEnv(t)
	e.install("cred-a")
	e.install("cred-b")
	e.getTokens(e.dial(), "cred-a", 2)
	e.getTokens(e.dial(), "cred-b", 1)
	if err := e.srv.FlushIssuance(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	aPage := e.list(&rotavaultv1.ListConsumersRequest{PageSize: 1})
	if aPage.GetNextPageToken() == "" {
		t.Fatal("no next page after the first of two consumers")
	}
	writes := e.store.writes()
	for _, tt := range []struct {
		name  string
		req   *rotavaultv1.ListConsumersRequest
		code  codes.Code
		field string
	}{
		{"negative page size", &rotavaultv1.ListConsumersRequest{PageSize: -1}, codes.InvalidArgument, "page_size"},
		{"page size over 1000", &rotavaultv1.ListConsumersRequest{PageSize: 1001}, codes.InvalidArgument, "page_size"},
		{"malformed credential id", &rotavaultv1.ListConsumersRequest{CredentialId: "Cred A"}, codes.InvalidArgument, "credential_id"},
		{"page token not base64", &rotavaultv1.ListConsumersRequest{PageToken: "%%%"}, codes.InvalidArgument, "page_token"},
		{"page token not ours", &rotavaultv1.ListConsumersRequest{PageToken: base64.RawURLEncoding.EncodeToString([]byte("cred-a"))}, codes.InvalidArgument, "page_token"},
		{"page token of another listing", &rotavaultv1.ListConsumersRequest{CredentialId: "cred-b", PageToken: aPage.GetNextPageToken()}, codes.InvalidArgument, "page_token"},
		{"page token too long", &rotavaultv1.ListConsumersRequest{PageToken: strings.Repeat("A", 9000)}, codes.InvalidArgument, "page_token"},
		{"unknown credential", &rotavaultv1.ListConsumersRequest{CredentialId: "cred-missing"}, codes.NotFound, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.admin.ListConsumers(testCtx(t), tt.req)
			if status.Code(err) != tt.code {
				t.Fatalf("ListConsumers: %v; want %s", err, tt.code)
			}
			if tt.field == "" {
				return
			}
			var fields []string
			for _, d := range status.Convert(err).Details() {
				if br, ok := d.(*errdetails.BadRequest); ok {
					for _, v := range br.GetFieldViolations() {
						fields = append(fields, v.GetField())
					}
				}
			}
			if len(fields) != 1 || fields[0] != tt.field {
				t.Fatalf("field violations %v; want %s", fields, tt.field)
			}
		})
	}
	if got := e.store.writes() - writes; got != 0 {
		t.Fatalf("bad requests made %d store writes", got)
	}
	// The token of the first page still reads the second.
	rest := e.list(&rotavaultv1.ListConsumersRequest{PageSize: 1, PageToken: aPage.GetNextPageToken()})
	if len(rest.GetConsumers()) != 1 || rest.GetConsumers()[0].GetCredentialId() != "cred-b" || rest.GetNextPageToken() != "" {
		t.Fatalf("second page %v; want cred-b's consumer and no further page", rest)
	}
}
