package server

import (
	"github.com/rotavault/rotavault/internal/testpki"
	"google.golang.org/grpc"
	"log/slog"

	"context"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// A CN or DNS SAN spelling a URI identity, several URI SANs, or a URI that
// is not canonical must not name a caller: each could pass for an identity
// the policy grants to someone else.
func TestCertificateIdentityRefusesConfusableNames(t *testing.T) {
	ca := testpki.NewCA(t, "ca")
	for _, tt := range []struct {
		name string
		spec testpki.Leaf
		want string // "" for refused
	}{
		{"URI SAN", testpki.Leaf{CN: "x", DNS: []string{"x.test"}, URIs: []string{idPayments}}, idPayments},
		{"DNS SAN", testpki.Leaf{CN: "x", DNS: []string{idOps}}, "dns:" + idOps},
		{"CN", testpki.Leaf{CN: idStranger}, "cn:" + idStranger},
		{"URI SAN in the reserved scheme cn", testpki.Leaf{URIs: []string{"cn:admin"}}, ""},
		{"URI SAN in the reserved scheme dns", testpki.Leaf{URIs: []string{"DNS:ops.rotavault.test"}}, ""},
		{"CN spelling a SPIFFE ID", testpki.Leaf{CN: idAdmin}, ""},
		{"DNS SAN spelling a SPIFFE ID", testpki.Leaf{DNS: []string{idAdmin}}, ""},
		{"two URI SANs", testpki.Leaf{URIs: []string{idPayments, idAdmin}}, ""},
		{"dot-dot segment", testpki.Leaf{URIs: []string{"spiffe://rotavault.test/ns/payments/../../admin"}}, ""},
		{"escaped dot-dot", testpki.Leaf{URIs: []string{"spiffe://rotavault.test/ns/payments/%2e%2e/x"}}, ""},
		{"empty segment", testpki.Leaf{URIs: []string{"spiffe://rotavault.test/ns/payments//x"}}, ""},
		{"query", testpki.Leaf{URIs: []string{"spiffe://rotavault.test/ns/payments/x?admin"}}, ""},
		{"CN with a space", testpki.Leaf{CN: "ops rotavault.test"}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			leaf, err := parseLeaf(ca.KeyPair(t, tt.spec))
			if err != nil {
				t.Fatal(err)
			}
			got, err := CertificateIdentity(leaf)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("CertificateIdentity = %q; want refused", got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("CertificateIdentity = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// A certificate's CN or DNS SAN is not the bearer identity of the same
// name: a CA that lets anyone ask for CN "ops.rotavault.test" must not hand
// out the rights the tokens file gives that name.
func TestCertificateNamesAreNotBearerIdentities(t *testing.T) {
	e := newAuthEnv(t, authEnvOptions{})
	e.seed()
	reauth := func(conn *grpc.ClientConn) error {
		// No flow: INVALID_ARGUMENT once past authorization.
		_, err := rotavaultv1.NewTokenVaultServiceClient(conn).Reauthenticate(testCtx(t), &rotavaultv1.ReauthenticateRequest{CredentialId: "cred-a"})
		return err
	}
	if err := reauth(e.as(idOps, true)); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("the bearer identity %s: %v; want past authorization (INVALID_ARGUMENT)", idOps, err)
	}
	for _, spec := range []testpki.Leaf{{CN: idOps}, {DNS: []string{"stranger"}}} {
		cert := e.ca.KeyPair(t, spec)
		if err := reauth(e.dialWith(e.ca, &cert, "")); status.Code(err) != codes.PermissionDenied {
			t.Errorf("a certificate with CN %q, DNS SANs %q: %v; want PERMISSION_DENIED", spec.CN, spec.DNS, err)
		}
	}
	// A tokens file cannot claim a certificate's name either.
	for _, line := range []string{"cn:ops.rotavault.test ", "dns:ops.rotavault.test ", "DNS:x "} {
		if _, err := ParseTokens([]byte(line + TokenDigest("t") + "\n")); err == nil {
			t.Errorf("ParseTokens accepted the identity %q", line)
		}
	}
	if _, err := ParseTokens([]byte(idAdmin + " " + TokenDigest("t") + "\n")); err != nil {
		t.Errorf("ParseTokens refused a SPIFFE ID: %v", err)
	}
}

// End to end: a client certificate from the trusted CA whose CN is the
// admin's SPIFFE ID must not be the admin.
func TestCommonNameCannotImpersonateURIIdentity(t *testing.T) {
	e := newAuthEnv(t, authEnvOptions{})
	forged := e.ca.KeyPair(t, testpki.Leaf{CN: idAdmin})
	_, err := rotavaultv1.NewCredentialAdminServiceClient(e.dialWith(e.ca, &forged, "")).ListCredentials(testCtx(t), &rotavaultv1.ListCredentialsRequest{})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("CN spelling the admin's SPIFFE ID: %v; want UNAUTHENTICATED", err)
	}
}

func TestPolicyPrefixStopsAtPathSegment(t *testing.T) {
	for _, bad := range []string{
		`{"rules":[{"identity":"spiffe://x/ns/a*","role":"admin"}]}`,
		`{"rules":[{"identity":"ops*","role":"operator","credentials":["*"]}]}`,
	} {
		if _, err := ParsePolicy([]byte(bad)); err == nil {
			t.Errorf("ParsePolicy(%s) accepted a prefix ending mid-segment", bad)
		}
	}
	p, err := ParsePolicy([]byte(`{"rules":[{"identity":"spiffe://x/ns/a/*","role":"consumer","credentials":["c"]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if p.Allows("spiffe://x/ns/ab/sa/evil", RoleConsumer, "c") {
		t.Error(`"spiffe://x/ns/a/*" matched "spiffe://x/ns/ab/…"`)
	}
	if !p.Allows("spiffe://x/ns/a/sa/svc", RoleConsumer, "c") {
		t.Error(`"spiffe://x/ns/a/*" did not match "spiffe://x/ns/a/sa/svc"`)
	}
}

// Removing a CA from the client bundle must cut off connections already
// authenticated by it: otherwise a stolen certificate keeps its rights for
// as long as its holder keeps one connection open.
func TestClientCARemovalCutsOffOpenConnections(t *testing.T) {
	e := newAuthEnv(t, authEnvOptions{reloadInterval: time.Hour})
	admin := rotavaultv1.NewCredentialAdminServiceClient(e.as(idAdmin, false))
	if _, err := admin.ListCredentials(testCtx(t), &rotavaultv1.ListCredentialsRequest{}); err != nil {
		t.Fatalf("before the rotation: %v", err)
	}
	writeFile(t, e.caFile, testpki.NewCA(t, "replacement client CA").PEM)
	if err := e.reloader.Reload(); err != nil {
		t.Fatal(err)
	}
	_, err := admin.ListCredentials(testCtx(t), &rotavaultv1.ListCredentialsRequest{})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("same connection after its CA left the bundle: %v; want UNAUTHENTICATED", err)
	}
}

// A chain verified once is remembered only until its first certificate
// expires.
func TestTrustCacheHonoursExpiry(t *testing.T) {
	ca := testpki.NewCA(t, "ca")
	leaf, err := parseLeaf(ca.KeyPair(t, testpki.Leaf{CN: "svc"}))
	if err != nil {
		t.Fatal(err)
	}
	var c trustCache
	pool, peers := ca.Pool(), []*x509.Certificate{leaf}
	if err := c.verify(pool, peers, time.Now()); err != nil {
		t.Fatalf("valid certificate: %v", err)
	}
	if err := c.verify(pool, peers, leaf.NotAfter.Add(time.Second)); err == nil {
		t.Fatal("an expired certificate still verified (from the cache)")
	}
	if err := c.verify(nil, peers, time.Now()); err == nil {
		t.Fatal("a certificate verified with no client CA in force")
	}
}

// A watch opened with a bearer token must end once that token is removed
// from the tokens file, not keep streaming notices.
func TestWatchEndsWhenTokenRevoked(t *testing.T) {
	e := newAuthEnv(t, authEnvOptions{reloadInterval: time.Hour})
	e.seed()
	ctx := testCtx(t)
	stream, err := rotavaultv1.NewTokenVaultServiceClient(e.as(idPayments, true)).WatchRevocations(ctx,
		&rotavaultv1.WatchRevocationsRequest{CredentialIds: []string{"cred-a"}})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := stream.Recv(); err != nil || ev.GetStarted() == nil {
		t.Fatalf("first event %v, %v; want started", ev, err)
	}
	admin := e.callers[idAdmin]
	writeFile(t, e.tokensFile, []byte(admin.identity+" "+TokenDigest(admin.token)+"\n"))
	if err := e.reloader.Reload(); err != nil {
		t.Fatal(err)
	}
	rt, err := e.sim.IssueRefreshToken(simClient, []string{"api", "refresh_token"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rotavaultv1.NewTokenVaultServiceClient(e.as(idAdmin, false)).Reauthenticate(ctx, &rotavaultv1.ReauthenticateRequest{CredentialId: "cred-a",
		Flow: &rotavaultv1.ReauthenticateRequest_RefreshTokenImport{RefreshTokenImport: &rotavaultv1.RefreshTokenImport{RefreshToken: rt}}}); err != nil {
		t.Fatalf("import into cred-a: %v", err)
	}
	ev, err := stream.Recv()
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("watch after its token was revoked: got %v, %v; want UNAUTHENTICATED", ev, err)
	}
	if strings.Contains(e.logs.String(), e.callers[idPayments].token) {
		t.Error("the revoked token appears in the server log")
	}
}

// On an open server every connection is a distinct audit identity
// (DevIdentity/peer:HOST:PORT); the rate limit must still hold per host.
func TestOpenModeRateLimitIsPerHostNotPerConnection(t *testing.T) {
	l := newCallerLimiter(RateLimit{Rate: 1, Burst: 1}, limiterKey, newRefusalLog(slog.New(slog.DiscardHandler)))
	now := time.Now()
	l.now = func() time.Time { return now }
	as := func(id string) context.Context { return context.WithValue(context.Background(), identityKey{}, id) }
	if ok, _ := l.allow(as(DevIdentity + "/peer:127.0.0.1:40001")); !ok {
		t.Fatal("first call refused")
	}
	if ok, _ := l.allow(as(DevIdentity + "/peer:127.0.0.1:40002")); ok {
		t.Fatal("a new source port got a fresh bucket")
	}
	if ok, _ := l.allow(as(DevIdentity + "/peer:127.0.0.2:40001")); !ok {
		t.Fatal("another host shares the first host's bucket")
	}
}
