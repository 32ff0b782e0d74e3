package integration

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/server"
)

// revoke revokes id's family deliberately through this node.
func (e *env) revoke(id string) *rotavaultv1.RevokeCredentialResponse {
	e.t.Helper()
	resp, err := e.vault.RevokeCredential(ctxT(e.t), &rotavaultv1.RevokeCredentialRequest{CredentialId: id, Reason: "fan-out test"})
	if err != nil {
		e.t.Fatalf("revoke %s: %v", id, err)
	}
	return resp
}

// reinstall installs a new family for id through this node.
func (e *env) reinstall(id string) *rotavaultv1.FamilyActivated {
	e.t.Helper()
	rt, err := e.sim.IssueRefreshToken(simClientID, []string{"api", "refresh_token"})
	if err != nil {
		e.t.Fatal(err)
	}
	return e.importToken(id, rt)
}

// A revocation on one replica reaches watchers on every other replica, and
// those replicas stop handing out the revoked family's cached access token
// at once, not when it expires.
func TestRevocationReachesWatchersOnEveryReplica(t *testing.T) {
	primary := newEnv(t, envOptions{vault: vaulttest.StartDev(t)})
	primary.installSalesforce("acme")
	others := []*env{primary.replica(), primary.replica()}
	var streams []rotavaultv1.TokenVaultService_WatchRevocationsClient
	for _, o := range others {
		o.token("acme") // cached on this replica, valid for minutes
		s, _ := o.watch(ctxT(t), "", "acme")
		streams = append(streams, s)
	}
	start := time.Now()
	revoked := primary.revoke("acme")
	for i, s := range streams {
		n := nextNotice(t, s)
		if n.GetKind() != rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_REVOKED || n.GetFamilyId() != revoked.GetFamilyId() ||
			n.GetReason() != rotavaultv1.RevocationReason_REVOCATION_REASON_ADMIN_REVOKED {
			t.Fatalf("replica %d got %+v", i, n)
		}
		t.Logf("replica %d: notice %s after the revocation began", i, time.Since(start).Round(time.Millisecond))
		_, err := others[i].vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
		wantCode(t, err, codes.FailedPrecondition, server.ReasonReauthenticationRequired)
	}
}

// noticeKey identifies a notice for comparing what was produced with what
// was received.
func noticeKey(n *rotavaultv1.Notice) string {
	return fmt.Sprintf("%s/%s/%s", n.GetCredentialId(), n.GetKind(), n.GetFamilyId())
}

// A watcher that keeps its cursor gets every notice exactly once, in order,
// while notices come from two replicas, its replica restarts, and it resumes
// on the other one.
func TestWatchResumesAcrossReplicasAndRestartsExactlyOnce(t *testing.T) {
	a := newEnv(t, envOptions{vault: vaulttest.StartDev(t)})
	a.installSalesforce("acme")
	b := a.replica()

	var want []string
	produce := func(via *env) {
		r := via.revoke("acme")
		want = append(want, fmt.Sprintf("acme/%s/%s", rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_REVOKED, r.GetFamilyId()))
		act := via.reinstall("acme")
		want = append(want, fmt.Sprintf("acme/%s/%s", rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_ACTIVATED, act.GetFamilyId()))
	}
	var got []string
	receive := func(stream rotavaultv1.TokenVaultService_WatchRevocationsClient, n int) string {
		var cursor string
		for range n {
			m := nextNotice(t, stream)
			got = append(got, noticeKey(m))
			cursor = m.GetCursor()
		}
		return cursor
	}

	stream, _ := b.watch(ctxT(t), "", "acme")
	produce(a)
	produce(b)
	cursor := receive(stream, 4)

	// The watcher's replica restarts; meanwhile both replicas go on.
	b.stop()
	produce(a)
	b.start()
	produce(b)

	// It resumes on the restarted replica, then moves to the other one
	// half-way through.
	stream, _ = b.watch(ctxT(t), cursor, "acme")
	cursor = receive(stream, 2)
	stream, _ = a.watch(ctxT(t), cursor, "acme")
	produce(a)
	receive(stream, 4)

	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("received\n%q\nwant, in order, once each\n%q", got, want)
	}
}

// Servers end connections at their maximum age, so load balancers can
// rebalance long-lived watch streams; a client that resumes with its cursor
// loses nothing and gets nothing twice.
func TestWatchAcrossMaximumConnectionAge(t *testing.T) {
	e := newEnv(t, envOptions{serverConfig: func(c *server.Config) {
		c.MaxConnectionAge, c.MaxConnectionAgeGrace = 300*time.Millisecond, 50*time.Millisecond
	}})
	e.installSalesforce("acme")

	var want []string
	produced := make(chan struct{})
	streamEnded := make(chan struct{}, 16)
	go func() {
		defer close(produced)
		for i := range 3 {
			if i > 0 {
				// The next notices come after a stream was cut.
				select {
				case <-streamEnded:
				case <-time.After(awaitDeadline):
					t.Error("no stream was ended by the connection's maximum age")
					return
				}
			}
			r, err := e.vault.RevokeCredential(context.Background(), &rotavaultv1.RevokeCredentialRequest{CredentialId: "acme", Reason: "age test"})
			if err != nil {
				t.Errorf("revoke: %v", err)
				return
			}
			want = append(want, fmt.Sprintf("acme/%s/%s", rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_REVOKED, r.GetFamilyId()))
			rt, err := e.sim.IssueRefreshToken(simClientID, []string{"api", "refresh_token"})
			if err != nil {
				t.Error(err)
				return
			}
			resp, err := e.vault.Reauthenticate(context.Background(), &rotavaultv1.ReauthenticateRequest{
				CredentialId: "acme",
				Flow:         &rotavaultv1.ReauthenticateRequest_RefreshTokenImport{RefreshTokenImport: &rotavaultv1.RefreshTokenImport{RefreshToken: rt}},
			})
			if err != nil {
				t.Errorf("import: %v", err)
				return
			}
			want = append(want, fmt.Sprintf("acme/%s/%s", rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_ACTIVATED, resp.GetFamilyActivated().GetFamilyId()))
		}
	}()

	// A client that resumes with its cursor whenever its stream ends.
	ctx := ctxT(t)
	var got []string
	cursor, ended := "", 0
	_, cursor = e.watch(ctx, "", "acme")
	for len(got) < 6 && ctx.Err() == nil {
		stream, err := e.vault.WatchRevocations(ctx, &rotavaultv1.WatchRevocationsRequest{CredentialIds: []string{"acme"}, Cursor: cursor})
		if err != nil {
			t.Fatal(err)
		}
		for {
			m, err := stream.Recv()
			if err != nil {
				if status.Code(err) != codes.Unavailable && !errors.Is(err, context.Canceled) {
					t.Fatalf("stream ended with %v, want UNAVAILABLE", err)
				}
				ended++
				select {
				case streamEnded <- struct{}{}:
				default:
				}
				break
			}
			if n := m.GetNotice(); n != nil {
				got = append(got, noticeKey(n))
				cursor = n.GetCursor()
			}
		}
	}
	<-produced
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("received\n%q\nwant, in order, once each\n%q", got, want)
	}
	if ended == 0 {
		t.Fatal("no stream was ended by the connection's maximum age")
	}
	t.Logf("%d streams ended by the maximum connection age", ended)
}
