package server

import (
	"fmt"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/internal/testpki"

	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker"
	"github.com/rotavault/rotavault/broker/option"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/store/memstore"
)

const (
	simClient = "3MVG9-auth-test"
	simSecret = "auth-test-client-secret"
	// awaitDeadline bounds every wait for an asynchronous outcome; it is a
	// deadline, not a measurement.
	awaitDeadline = 10 * time.Second

	idAdmin    = "spiffe://rotavault.test/admin"
	idPayments = "spiffe://rotavault.test/ns/payments/sa/billing"
	idOps      = "ops.rotavault.test"
	idStranger = "stranger"
)

// testPolicy grants ops and stranger the same rights whether they come
// with a certificate (a DNS SAN, a CN: "dns:…", "cn:…") or a bearer token.
const testPolicy = `{"rules": [
  {"identity": "spiffe://rotavault.test/admin", "role": "admin"},
  {"identity": "spiffe://rotavault.test/ns/payments/*", "role": "consumer", "credentials": ["cred-a"]},
  {"identity": "ops.rotavault.test", "role": "operator", "credentials": ["cred-a"]},
  {"identity": "dns:ops.rotavault.test", "role": "operator", "credentials": ["cred-a"]},
  {"identity": "stranger", "role": "consumer", "credentials": ["cred-b"]},
  {"identity": "cn:stranger", "role": "consumer", "credentials": ["cred-b"]}
]}`

// caller is one test identity, as a client certificate and as a bearer
// token.
type caller struct {
	identity string
	cert     tls.Certificate
	token    string
}

type recordingAuditor struct {
	mu     sync.Mutex
	events []audit.Event
}

func (a *recordingAuditor) Record(_ context.Context, e audit.Event) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.events = append(a.events, e)
	return nil
}

func (a *recordingAuditor) actorOf(action, credential string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range a.events {
		if e.Action == action && e.Credential == credential {
			return e.Actor
		}
	}
	return ""
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type authEnvOptions struct {
	requireClientCert bool
	reloadInterval    time.Duration
	rateLimit         RateLimit
	// issuanceFlush, when set, summarises token issuance into the
	// recording auditor at this interval.
	issuanceFlush time.Duration
}

// authEnv is a server with TLS, bearer tokens and the test policy on
// 127.0.0.1, backed by a real broker and the Salesforce simulator.
type authEnv struct {
	t                                         testing.TB
	dir                                       string
	ca                                        *testpki.CA
	addr                                      string
	policyFile, tokensFile, certFile, keyFile string
	caFile                                    string
	callers                                   map[string]caller
	sim                                       *providersim.Server
	auditor                                   *recordingAuditor
	logs                                      *lockedBuffer
	hup                                       chan os.Signal
	reloader                                  *Reloader
}

func newAuthEnv(t testing.TB, opts authEnvOptions) *authEnv {
	t.Helper()
	dir := t.TempDir()
	e := &authEnv{
		t: t, dir: dir, ca: testpki.NewCA(t, "rotavault test CA"),
		policyFile: filepath.Join(dir, "policy.json"), tokensFile: filepath.Join(dir, "tokens"),
		certFile: filepath.Join(dir, "server.crt"), keyFile: filepath.Join(dir, "server.key"), caFile: filepath.Join(dir, "clients-ca.crt"),
		callers: make(map[string]caller), auditor: &recordingAuditor{}, logs: &lockedBuffer{}, hup: make(chan os.Signal, 1),
	}
	certPEM, keyPEM := e.ca.Issue(t, testpki.Leaf{CN: "rotavault", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	writeFile(t, e.certFile, certPEM)
	writeFile(t, e.keyFile, keyPEM)
	writeFile(t, e.caFile, e.ca.PEM)
	writeFile(t, e.policyFile, []byte(testPolicy))
	var tokens strings.Builder
	for _, s := range []struct {
		id   string
		spec testpki.Leaf
	}{
		// URI SAN wins over DNS SAN and CN.
		{idAdmin, testpki.Leaf{CN: "admin-cn", DNS: []string{"admin.rotavault.test"}, URIs: []string{idAdmin}}},
		{idPayments, testpki.Leaf{CN: "billing", URIs: []string{idPayments}}},
		// DNS SAN wins over CN.
		{idOps, testpki.Leaf{CN: "ops-cn", DNS: []string{idOps}}},
		{idStranger, testpki.Leaf{CN: idStranger}},
	} {
		token := "tok-" + strings.NewReplacer("/", "-", ":", "-").Replace(s.id) + "-7f3a9c"
		e.callers[s.id] = caller{identity: s.id, cert: e.ca.KeyPair(t, s.spec), token: token}
		tokens.WriteString(s.id + " " + TokenDigest(token) + "\n")
	}
	writeFile(t, e.tokensFile, []byte("# identity sha256(token)\n"+tokens.String()))

	sim, err := providersim.Start(providersim.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	sim.AddClient(providersim.Client{ID: simClient, Secret: simSecret, RedirectURIs: []string{"http://127.0.0.1:1/cb"}})
	e.sim = sim

	log := slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	tokensFile := e.tokensFile
	if opts.requireClientCert {
		tokensFile = ""
	}
	r, err := NewReloader(ReloaderConfig{
		PolicyFile: e.policyFile, TokensFile: tokensFile, CertFile: e.certFile, KeyFile: e.keyFile, ClientCAFile: e.caFile,
		RequireClientCert: opts.requireClientCert, Interval: opts.reloadInterval, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.reloader = r
	ac := AuthConfig{Policy: r, Logger: log}
	if tokensFile != "" {
		ac.Tokens = r
	}
	auth, err := NewAuth(ac)
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(context.Background(), broker.Config{Store: memstore.New(), Provider: provider.New(nil), Auditor: e.auditor},
		option.WithLogger(log), option.WithSchedulerInterval(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	srv := New(Config{Broker: b, Credentials: b.Credentials(), Flows: b.Flows(), Catalog: b.Catalog(), Logger: log, Reflection: true, Auth: auth, RateLimit: opts.rateLimit,
		Auditor: issuanceAuditor(opts.issuanceFlush, e.auditor), IssuanceFlushInterval: opts.issuanceFlush,
		ExtraOptions: []grpc.ServerOption{grpc.Creds(credentials.NewTLS(r.ServerTLSConfig()))}})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = lis.Addr().String()
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.GRPC.Serve(lis)
	}()
	ctx, stopReload := context.WithCancel(context.Background())
	reloaded := make(chan struct{})
	go func() {
		defer close(reloaded)
		r.Run(ctx, e.hup)
	}()
	t.Cleanup(func() {
		stopReload()
		<-reloaded
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-served
		_ = b.Close()
	})
	return e
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return true }

// dial connects over TLS trusting roots, presenting cert and token if
// given.
func (e *authEnv) dialWith(roots *testpki.CA, cert *tls.Certificate, token string) *grpc.ClientConn {
	e.t.Helper()
	tc := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots.Pool()}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tc))}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(token)))
	}
	conn, err := grpc.NewClient(e.addr, opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// as dials as the named identity (certificate or token), or anonymously
// for "".
func (e *authEnv) as(id string, viaToken bool) *grpc.ClientConn {
	e.t.Helper()
	if id == "" {
		return e.dialWith(e.ca, nil, "")
	}
	c, ok := e.callers[id]
	if !ok {
		e.t.Fatalf("no caller %q", id)
	}
	if viaToken {
		return e.dialWith(e.ca, nil, c.token)
	}
	return e.dialWith(e.ca, &c.cert, "")
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), awaitDeadline)
	t.Cleanup(cancel)
	return ctx
}

func (e *authEnv) spec() *rotavaultv1.CredentialSpec {
	return &rotavaultv1.CredentialSpec{
		ProviderKind: rotavaultv1.ProviderKind_PROVIDER_KIND_SALESFORCE,
		BaseUrl:      e.sim.URL(), ClientId: simClient, ClientSecret: simSecret,
		Scopes: []string{"api", "refresh_token"}, AccessTokenLifetime: durationpb.New(time.Hour),
	}
}

// seed creates cred-a and cred-b as the admin.
func (e *authEnv) seed() {
	e.t.Helper()
	admin := rotavaultv1.NewCredentialAdminServiceClient(e.as(idAdmin, false))
	for _, id := range []string{"cred-a", "cred-b"} {
		if _, err := admin.CreateCredential(testCtx(e.t), &rotavaultv1.CreateCredentialRequest{CredentialId: id, Spec: e.spec()}); err != nil {
			e.t.Fatalf("create %s: %v", id, err)
		}
	}
}

// rpcCase calls one method; wrong is an authenticated identity the policy
// does not permit, right one it does.
type rpcCase struct {
	method       string
	wrong, right string
	call         func(ctx context.Context, conn *grpc.ClientConn) error
}

func rpcCases(e *authEnv) []rpcCase {
	vault := func(c *grpc.ClientConn) rotavaultv1.TokenVaultServiceClient {
		return rotavaultv1.NewTokenVaultServiceClient(c)
	}
	admin := func(c *grpc.ClientConn) rotavaultv1.CredentialAdminServiceClient {
		return rotavaultv1.NewCredentialAdminServiceClient(c)
	}
	return []rpcCase{
		{"/rotavault.v1.TokenVaultService/GetAccessToken", idStranger, idPayments, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := vault(c).GetAccessToken(ctx, &rotavaultv1.GetAccessTokenRequest{CredentialId: "cred-a"})
			return err
		}},
		{"/rotavault.v1.TokenVaultService/Reauthenticate", idPayments, idOps, func(ctx context.Context, c *grpc.ClientConn) error {
			// No flow: INVALID_ARGUMENT once past authorization.
			_, err := vault(c).Reauthenticate(ctx, &rotavaultv1.ReauthenticateRequest{CredentialId: "cred-a"})
			return err
		}},
		{"/rotavault.v1.TokenVaultService/RevokeCredential", idPayments, idOps, func(ctx context.Context, c *grpc.ClientConn) error {
			// No reason: INVALID_ARGUMENT once past authorization, so the
			// matrix revokes nothing. A consumer of the credential is denied.
			_, err := vault(c).RevokeCredential(ctx, &rotavaultv1.RevokeCredentialRequest{CredentialId: "cred-a"})
			return err
		}},
		{"/rotavault.v1.TokenVaultService/WatchRevocations", idStranger, idPayments, func(ctx context.Context, c *grpc.ClientConn) error {
			s, err := vault(c).WatchRevocations(ctx, &rotavaultv1.WatchRevocationsRequest{CredentialIds: []string{"cred-a"}})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}},
		{"/rotavault.v1.CredentialAdminService/CreateCredential", idOps, idAdmin, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := admin(c).CreateCredential(ctx, &rotavaultv1.CreateCredentialRequest{CredentialId: "cred-new", Spec: e.spec()})
			return err
		}},
		{"/rotavault.v1.CredentialAdminService/UpdateCredential", idOps, idAdmin, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := admin(c).UpdateCredential(ctx, &rotavaultv1.UpdateCredentialRequest{CredentialId: "cred-a", Spec: &rotavaultv1.CredentialSpec{ClientId: simClient}})
			return err
		}},
		{"/rotavault.v1.CredentialAdminService/GetCredential", idPayments, idAdmin, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := admin(c).GetCredential(ctx, &rotavaultv1.GetCredentialRequest{CredentialId: "cred-a"})
			return err
		}},
		{"/rotavault.v1.CredentialAdminService/ListCredentials", idOps, idAdmin, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := admin(c).ListCredentials(ctx, &rotavaultv1.ListCredentialsRequest{})
			return err
		}},
		{"/rotavault.v1.CredentialAdminService/DeleteCredential", idOps, idAdmin, func(ctx context.Context, c *grpc.ClientConn) error {
			// A credential that does not exist: NOT_FOUND once authorized.
			_, err := admin(c).DeleteCredential(ctx, &rotavaultv1.DeleteCredentialRequest{CredentialId: "cred-missing"})
			return err
		}},
		{"/rotavault.v1.CredentialAdminService/ListConsumers", idOps, idAdmin, func(ctx context.Context, c *grpc.ClientConn) error {
			// An operator of cred-a is denied even cred-a's consumers: the
			// catalog names every caller, an admin's view.
			_, err := admin(c).ListConsumers(ctx, &rotavaultv1.ListConsumersRequest{CredentialId: "cred-a"})
			return err
		}},
		{"/rotavault.v1.CredentialAdminService/BackupStore", idOps, idAdmin, func(ctx context.Context, c *grpc.ClientConn) error {
			// No store snapshot here: FAILED_PRECONDITION once authorized.
			s, err := admin(c).BackupStore(ctx, &rotavaultv1.BackupStoreRequest{})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}},
		{"/rotavault.v1.CredentialAdminService/VerifyAuditTrail", idOps, idAdmin, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := admin(c).VerifyAuditTrail(ctx, &rotavaultv1.VerifyAuditTrailRequest{})
			return err
		}},
		{"/rotavault.v1.CredentialAdminService/GetServerStatus", idPayments, idAdmin, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := admin(c).GetServerStatus(ctx, &rotavaultv1.GetServerStatusRequest{})
			return err
		}},
		{"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", idPayments, idAdmin, func(ctx context.Context, c *grpc.ClientConn) error {
			s, err := reflectionv1.NewServerReflectionClient(c).ServerReflectionInfo(ctx)
			if err != nil {
				return err
			}
			// A stream refused by the server may end before the request is
			// sent: Send then reports io.EOF, and the status is Recv's.
			if err := s.Send(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{}}); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			_, err = s.Recv()
			return err
		}},
	}
}

// TestMethodTableCoversEveryRPC fails when an RPC is added to a Rotavault
// service without joining the authorization table (or the matrix below).
func TestMethodTableCoversEveryRPC(t *testing.T) {
	rules := methodRules()
	matrix := make(map[string]bool)
	for _, c := range rpcCases(&authEnv{}) {
		matrix[c.method] = true
	}
	for _, sd := range []grpc.ServiceDesc{rotavaultv1.TokenVaultService_ServiceDesc, rotavaultv1.CredentialAdminService_ServiceDesc} {
		var names []string
		for _, m := range sd.Methods {
			names = append(names, m.MethodName)
		}
		for _, s := range sd.Streams {
			names = append(names, s.StreamName)
		}
		for _, n := range names {
			full := "/" + sd.ServiceName + "/" + n
			if _, ok := rules[full]; !ok {
				t.Errorf("%s is missing from methodRules: say which role (and which credential ids) it needs", full)
			}
			if !matrix[full] {
				t.Errorf("%s is missing from the authorization matrix test (rpcCases)", full)
			}
		}
	}
}

func TestAuthorizationMatrix(t *testing.T) {
	e := newAuthEnv(t, authEnvOptions{})
	e.seed()
	for _, via := range []string{"mtls", "bearer"} {
		t.Run(via, func(t *testing.T) {
			viaToken := via == "bearer"
			for _, c := range rpcCases(e) {
				t.Run(c.method[strings.LastIndex(c.method, "/")+1:], func(t *testing.T) {
					for _, who := range []struct {
						name, id string
					}{{"no identity", ""}, {"wrong identity", c.wrong}, {"right identity", c.right}} {
						err := c.call(testCtx(t), e.as(who.id, viaToken))
						code := status.Code(err)
						switch who.name {
						case "no identity":
							if code != codes.Unauthenticated {
								t.Errorf("%s: %v; want UNAUTHENTICATED", who.name, err)
							} else if msg := status.Convert(err).Message(); msg != "missing or invalid credentials" {
								t.Errorf("UNAUTHENTICATED says too much: %q", msg)
							}
						case "wrong identity":
							if code != codes.PermissionDenied {
								t.Errorf("%s (%s): %v; want PERMISSION_DENIED", who.name, who.id, err)
							}
						default:
							if code == codes.Unauthenticated || code == codes.PermissionDenied || code == codes.Unavailable {
								t.Errorf("%s (%s): %v; want past authorization", who.name, who.id, err)
							}
						}
					}
				})
			}
		})
	}
	t.Run("health stays open", func(t *testing.T) {
		resp, err := healthpb.NewHealthClient(e.as("", false)).Check(testCtx(t), &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health check without identity: %v, %v", resp, err)
		}
	})
	t.Run("invalid token", func(t *testing.T) {
		_, err := rotavaultv1.NewCredentialAdminServiceClient(e.dialWith(e.ca, nil, "not-a-token")).ListCredentials(testCtx(t), &rotavaultv1.ListCredentialsRequest{})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("unknown token: %v; want UNAUTHENTICATED", err)
		}
	})
	t.Run("certificate from another CA", func(t *testing.T) {
		other := testpki.NewCA(t, "other CA")
		cert := other.KeyPair(t, testpki.Leaf{URIs: []string{idAdmin}})
		_, err := rotavaultv1.NewCredentialAdminServiceClient(e.dialWith(e.ca, &cert, "")).ListCredentials(testCtx(t), &rotavaultv1.ListCredentialsRequest{})
		if code := status.Code(err); code == codes.OK || code == codes.PermissionDenied {
			t.Fatalf("admin identity from an untrusted CA: %v; want refused", err)
		}
	})
	t.Run("audit and logs name the caller", func(t *testing.T) {
		if got := e.auditor.actorOf(audit.ActionCredentialCreated, "cred-a"); got != idAdmin {
			t.Errorf("audit actor of the creation = %q, want %q", got, idAdmin)
		}
		logs := e.logs.String()
		if !strings.Contains(logs, `"caller":"`+idAdmin+`"`) {
			t.Errorf("the access log does not name the caller")
		}
		for _, c := range e.callers {
			if strings.Contains(logs, c.token) {
				t.Errorf("a bearer token appears in the server log")
			}
		}
	})
}

func TestClientCertificateRequiredWithoutBearerTokens(t *testing.T) {
	e := newAuthEnv(t, authEnvOptions{requireClientCert: true})
	_, err := healthpb.NewHealthClient(e.as("", false)).Check(testCtx(t), &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("connection without a client certificate: %v; want the handshake refused (UNAVAILABLE)", err)
	}
	_, err = rotavaultv1.NewCredentialAdminServiceClient(e.as(idAdmin, false)).ListCredentials(testCtx(t), &rotavaultv1.ListCredentialsRequest{})
	if err != nil {
		t.Fatalf("admin with a client certificate: %v", err)
	}
}

// TestBearerTransportRules checks where a valid token is accepted: over
// TLS or from loopback, never in plaintext across the network.
func TestBearerTransportRules(t *testing.T) {
	a := svcAdminAuth(t, "s3cret-token")
	md := metadata.Pairs("authorization", "Bearer s3cret-token")
	for _, tt := range []struct {
		name string
		peer *peer.Peer
		ok   bool
	}{
		{"plaintext loopback", &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}}, true},
		{"plaintext non-loopback", &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 1}}, false},
		{"TLS non-loopback", &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 1}, AuthInfo: credentials.TLSInfo{}}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := metadata.NewIncomingContext(peer.NewContext(context.Background(), tt.peer), md)
			ctx, err := a.authenticate(ctx)
			if tt.ok {
				if id, _ := IdentityFromContext(ctx); err != nil || id != "svc" {
					t.Fatalf("authenticate = %q, %v; want svc", id, err)
				}
				return
			}
			if status.Code(err) != codes.Unauthenticated {
				t.Fatalf("authenticate: %v; want UNAUTHENTICATED", err)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Fatal("the error quotes the token")
			}
		})
	}
}

// awaitCode retries call until it returns a code satisfying ok, failing at
// the deadline: reloads are asynchronous.
func awaitCode(t *testing.T, what string, call func(context.Context) error, ok func(codes.Code) bool) {
	t.Helper()
	poll.UntilSeen(t, awaitDeadline, what, func() (bool, string) {
		err := call(testCtx(t))
		return ok(status.Code(err)), fmt.Sprint(err)
	})
}

func grantStranger(t *testing.T, e *authEnv) {
	t.Helper()
	var p map[string][]map[string]any
	if err := json.Unmarshal([]byte(testPolicy), &p); err != nil {
		t.Fatal(err)
	}
	p["rules"] = append(p["rules"], map[string]any{"identity": CNIdentityPrefix + idStranger, "role": "consumer", "credentials": []string{"cred-a"}})
	data, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, e.policyFile, data)
}

func TestPolicyReload(t *testing.T) {
	for _, how := range []string{"file change", "SIGHUP"} {
		t.Run(how, func(t *testing.T) {
			interval := 20 * time.Millisecond
			if how == "SIGHUP" {
				interval = time.Hour // only the signal can reload
			}
			e := newAuthEnv(t, authEnvOptions{reloadInterval: interval})
			e.seed()
			client := rotavaultv1.NewTokenVaultServiceClient(e.as(idStranger, false))
			getA := func(ctx context.Context) error {
				_, err := client.GetAccessToken(ctx, &rotavaultv1.GetAccessTokenRequest{CredentialId: "cred-a"})
				return err
			}
			if code := status.Code(getA(testCtx(t))); code != codes.PermissionDenied {
				t.Fatalf("before the reload: %v; want PERMISSION_DENIED", code)
			}
			grantStranger(t, e)
			if how == "SIGHUP" {
				e.hup <- syscall.SIGHUP
			}
			awaitCode(t, "the stranger's grant", getA, func(c codes.Code) bool { return c != codes.PermissionDenied })

			// A broken policy keeps the last good one.
			writeFile(t, e.policyFile, []byte(`{"rules": [`))
			if err := e.reloader.Reload(); err == nil {
				t.Fatal("Reload accepted a broken policy")
			}
			if code := status.Code(getA(testCtx(t))); code == codes.PermissionDenied {
				t.Fatal("a broken policy file replaced the last good policy")
			}
		})
	}
}

func TestCertificateReload(t *testing.T) {
	e := newAuthEnv(t, authEnvOptions{reloadInterval: 20 * time.Millisecond})
	newCA := testpki.NewCA(t, "rotated server CA")
	admin := e.callers[idAdmin]
	list := func(ctx context.Context) error {
		conn := e.dialWith(newCA, &admin.cert, "")
		defer conn.Close()
		_, err := rotavaultv1.NewCredentialAdminServiceClient(conn).ListCredentials(ctx, &rotavaultv1.ListCredentialsRequest{})
		return err
	}
	if err := list(testCtx(t)); err == nil {
		t.Fatal("a client trusting only the new CA connected before the rotation")
	}
	certPEM, keyPEM := newCA.Issue(t, testpki.Leaf{CN: "rotavault", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	writeFile(t, e.keyFile, keyPEM)
	writeFile(t, e.certFile, certPEM)
	awaitCode(t, "the rotated server certificate", list, func(c codes.Code) bool { return c == codes.OK })
}

func TestWatchRevocationsFiltered(t *testing.T) {
	e := newAuthEnv(t, authEnvOptions{})
	e.seed()
	ctx := testCtx(t)
	// Watching "everything": the payments consumer may see cred-a only.
	stream, err := rotavaultv1.NewTokenVaultServiceClient(e.as(idPayments, false)).WatchRevocations(ctx, &rotavaultv1.WatchRevocationsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.GetStarted() == nil {
		t.Fatalf("first event %v, %v; want started", first, err)
	}
	vault := rotavaultv1.NewTokenVaultServiceClient(e.as(idAdmin, false))
	// cred-b's notice comes first in the log; the consumer must not see it.
	for _, id := range []string{"cred-b", "cred-a"} {
		rt, err := e.sim.IssueRefreshToken(simClient, []string{"api", "refresh_token"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := vault.Reauthenticate(ctx, &rotavaultv1.ReauthenticateRequest{CredentialId: id,
			Flow: &rotavaultv1.ReauthenticateRequest_RefreshTokenImport{RefreshTokenImport: &rotavaultv1.RefreshTokenImport{RefreshToken: rt}}}); err != nil {
			t.Fatalf("import into %s: %v", id, err)
		}
	}
	ev, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := ev.GetNotice().GetCredentialId(); got != "cred-a" {
		t.Fatalf("the consumer of cred-a received a notice about %q", got)
	}
	// The admin, watching everything from the start, sees both.
	all, err := vault.WatchRevocations(ctx, &rotavaultv1.WatchRevocationsRequest{Cursor: first.GetStarted().GetCursor()})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for len(seen) < 2 {
		ev, err := all.Recv()
		if err != nil {
			t.Fatalf("admin watch: %v (saw %v)", err, seen)
		}
		if n := ev.GetNotice(); n != nil {
			seen[n.GetCredentialId()] = true
		}
	}
}

func TestPolicyParse(t *testing.T) {
	p, err := ParsePolicy([]byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		id   string
		role Role
		cred string
		want bool
	}{
		{idPayments, RoleConsumer, "cred-a", true},
		{"spiffe://rotavault.test/ns/payments/", RoleConsumer, "cred-a", true},
		{"spiffe://rotavault.test/ns/paymentsX/a", RoleConsumer, "cred-a", false},
		{idPayments, RoleOperator, "cred-a", false},
		{idPayments, RoleConsumer, "cred-b", false},
		{idOps, RoleConsumer, "cred-a", true},
		{idOps, RoleOperator, "cred-a", true},
		{idOps, RoleAdmin, "", false},
		{idAdmin, RoleAdmin, "", true},
		{idAdmin, RoleOperator, "anything", true},
		{"", RoleConsumer, "cred-a", false},
	} {
		if got := p.Allows(tt.id, tt.role, tt.cred); got != tt.want {
			t.Errorf("Allows(%q, %s, %q) = %v, want %v", tt.id, tt.role, tt.cred, got, tt.want)
		}
	}
	for _, bad := range []string{
		`{"rules":[{"identity":"*","role":"admin"}]}`,
		`{"rules":[{"identity":"a*b","role":"admin"}]}`,
		`{"rules":[{"identity":"a","role":"root"}]}`,
		`{"rules":[{"identity":"a","role":"consumer"}]}`,
		`{"rules":[{"identity":"a","role":"consumer","credentials":["c*"]}]}`,
		`{"rules":[{"identity":"a","role":"admin","credential":["x"]}]}`,
	} {
		if _, err := ParsePolicy([]byte(bad)); err == nil {
			t.Errorf("ParsePolicy(%s) accepted it", bad)
		}
	}
}

func TestTokensFile(t *testing.T) {
	ts, err := ParseTokens([]byte("# comment\n\nsvc-a " + TokenDigest("alpha") + "\nsvc-b " + TokenDigest("beta") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if id, ok := ts.VerifyToken("beta"); !ok || id != "svc-b" {
		t.Errorf("VerifyToken(beta) = %q, %v", id, ok)
	}
	if _, ok := ts.VerifyToken("gamma"); ok {
		t.Error("an unknown token verified")
	}
	for _, bad := range []string{"svc", "svc nothex", "svc " + TokenDigest("a") + " extra", "a " + TokenDigest("x") + "\nb " + TokenDigest("x")} {
		_, err := ParseTokens([]byte(bad))
		if err == nil {
			t.Errorf("ParseTokens(%q) accepted it", bad)
		} else if strings.Contains(err.Error(), TokenDigest("x")) {
			t.Errorf("the error quotes a digest: %v", err)
		}
	}
}

func TestCertificateIdentity(t *testing.T) {
	if _, err := CertificateIdentity(nil); err == nil {
		t.Error("nil certificate named someone")
	}
	ca := testpki.NewCA(t, "ca")
	cert := ca.KeyPair(t, testpki.Leaf{})
	leaf, err := parseLeaf(cert)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CertificateIdentity(leaf); err == nil {
		t.Error("a certificate naming nobody yielded an identity")
	}
}

func parseLeaf(c tls.Certificate) (*x509.Certificate, error) {
	if len(c.Certificate) == 0 {
		return nil, errors.New("empty chain")
	}
	return x509.ParseCertificate(c.Certificate[0])
}

// open-mode servers (no Auth) keep today's behaviour over plaintext.
func TestOpenServerPlaintext(t *testing.T) {
	b, err := broker.New(context.Background(), broker.Config{Store: memstore.New(), Provider: provider.New(nil), Auditor: &recordingAuditor{}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	srv := New(Config{Broker: b, Credentials: b.Credentials(), Flows: b.Flows(), Catalog: b.Catalog()})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.GRPC.Serve(lis) }()
	defer func() { srv.Shutdown(context.Background()); <-done }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := rotavaultv1.NewCredentialAdminServiceClient(conn).ListCredentials(testCtx(t), &rotavaultv1.ListCredentialsRequest{}); err != nil {
		t.Fatalf("open server: %v", err)
	}
}

// An operator may revoke only the credentials the policy gives it; an admin
// may revoke any.
func TestRevokeCredentialScopedToOperatorsCredentials(t *testing.T) {
	e := newAuthEnv(t, authEnvOptions{})
	e.seed()
	req := &rotavaultv1.RevokeCredentialRequest{CredentialId: "cred-b", Reason: "suspected leak"}
	_, err := rotavaultv1.NewTokenVaultServiceClient(e.as(idOps, false)).RevokeCredential(testCtx(t), req)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("operator of cred-a revoking cred-b: %v, want PERMISSION_DENIED", err)
	}
	// cred-b has no family yet: past authorization, that is REAUTHENTICATION_REQUIRED.
	_, err = rotavaultv1.NewTokenVaultServiceClient(e.as(idAdmin, false)).RevokeCredential(testCtx(t), req)
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("admin revoking cred-b: %v, want FAILED_PRECONDITION", err)
	}
}
