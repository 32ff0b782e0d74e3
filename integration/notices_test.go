package integration

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/rotavault/rotavault/broker/option"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/server"
)

// revokeByTheft makes the provider revoke id's family (as a thief's reuse
// does) and lets Rotavault detect it on the next refresh.
func (e *env) revokeByTheft(id string) {
	e.t.Helper()
	tok := e.token(id)
	if !e.sim.RevokeFamilyOf(tok.GetAccessToken()) {
		e.t.Fatal("simulator did not revoke")
	}
	e.expire()
	_, err := e.vault.GetAccessToken(ctxT(e.t), &rotavaultv1.GetAccessTokenRequest{CredentialId: id})
	wantCode(e.t, err, codes.FailedPrecondition, server.ReasonReauthenticationRequired)
}

func TestWatchResumesWithCursorAcrossRestart(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.installSalesforce("alpha")
	e.installSalesforce("beta")

	ctx, cancel := context.WithCancel(ctxT(t))
	stream, _ := e.watch(ctx, "")
	e.revokeByTheft("alpha")
	seen := nextNotice(t, stream)
	if seen.GetCredentialId() != "alpha" {
		t.Fatalf("notice for %s", seen.GetCredentialId())
	}
	cancel() // the client goes away...

	// ...and misses a revocation, a reauthentication and a server restart.
	e.revokeByTheft("beta")
	rt, err := e.sim.IssueRefreshToken(simClientID, nil)
	if err != nil {
		t.Fatal(err)
	}
	act := e.importToken("alpha", rt)
	e.restart()

	stream, _ = e.watch(ctxT(t), seen.GetCursor())
	missed1, missed2 := nextNotice(t, stream), nextNotice(t, stream)
	if missed1.GetCredentialId() != "beta" || missed1.GetKind() != rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_REVOKED {
		t.Fatalf("first missed notice = %+v", missed1)
	}
	if missed2.GetCredentialId() != "alpha" || missed2.GetKind() != rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_ACTIVATED || missed2.GetFamilyId() != act.GetFamilyId() {
		t.Fatalf("second missed notice = %+v", missed2)
	}
	// Nothing twice: the next notice is a new one.
	e.revokeByTheft("alpha")
	if n := nextNotice(t, stream); n.GetCursor() == missed2.GetCursor() || n.GetFamilyId() != act.GetFamilyId() {
		t.Fatalf("next notice = %+v", n)
	}

	t.Run("filter by credential", func(t *testing.T) {
		stream, _ := e.watch(ctxT(t), seen.GetCursor(), "alpha")
		n := nextNotice(t, stream)
		if n.GetCredentialId() != "alpha" || n.GetKind() != rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_ACTIVATED {
			t.Fatalf("filtered replay started with %+v", n)
		}
	})
}

func TestExpiredCursorIsOutOfRange(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.installSalesforce("alpha") // one activation notice
	_, start := e.watch(ctxT(t), "")
	e.stop()
	// Restart with a log that keeps a single notice, then push two more.
	e.opts.brokerOpts = append(e.opts.brokerOpts, option.WithNoticeRetention(1))
	e.start()
	e.revokeByTheft("alpha")
	rt, err := e.sim.IssueRefreshToken(simClientID, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.importToken("alpha", rt)

	s, err := e.vault.WatchRevocations(ctxT(t), &rotavaultv1.WatchRevocationsRequest{Cursor: start})
	if err == nil {
		_, err = s.Recv()
	}
	wantCode(t, err, codes.OutOfRange, server.ReasonCursorExpired)
}
