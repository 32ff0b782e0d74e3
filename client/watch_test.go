package client_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/rotavault/rotavault/broker"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/client"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// notices collects what a Client's notice handler receives.
type notices chan *rotavaultv1.Notice

func newNotices() (notices, client.Option) {
	n := make(notices, 100)
	return n, client.WithNoticeHandler(func(x *rotavaultv1.Notice) { n <- x })
}

// await returns the first notice of kind for id, skipping others.
func (n notices) await(t testing.TB, id string, kind rotavaultv1.NoticeKind) *rotavaultv1.Notice {
	t.Helper()
	deadline := time.After(awaitDeadline)
	for {
		select {
		case x := <-n:
			if x.GetCredentialId() == id && x.GetKind() == kind {
				return x
			}
		case <-deadline:
			t.Fatalf("no %s notice for %s within %s", kind, id, awaitDeadline)
			return nil
		}
	}
}

func TestNoticeDropsTheCache(t *testing.T) {
	for _, tc := range []struct {
		name string
		// act changes the family of "acme" behind the Client's back.
		act        func(t *testing.T, e *env, cached client.Token)
		kind       rotavaultv1.NoticeKind
		wantReauth bool // else: a token of a new family
	}{
		{
			name: "an operator revokes the family",
			act: func(t *testing.T, e *env, _ client.Token) {
				if err := e.revoke(ctxT(t), "acme"); err != nil {
					t.Fatal(err)
				}
			},
			kind: rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_REVOKED, wantReauth: true,
		},
		{
			name: "the provider revoked the family and another consumer found out",
			act: func(t *testing.T, e *env, cached client.Token) {
				if !e.sim.RevokeFamilyOf(cached.AccessToken) {
					t.Fatal("simulator did not revoke")
				}
				_, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme",
					RejectedToken: &rotavaultv1.RejectedToken{Token: &rotavaultv1.RejectedToken_Fingerprint{Fingerprint: cached.Fingerprint}}})
				if status.Code(err) != codes.FailedPrecondition {
					t.Fatalf("the other consumer's report: %v, want FAILED_PRECONDITION", err)
				}
			},
			kind: rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_REVOKED, wantReauth: true,
		},
		{
			name: "an operator reauthenticates: a new family",
			act: func(t *testing.T, e *env, _ client.Token) {
				if err := e.reauthenticate(ctxT(t), "acme"); err != nil {
					t.Fatal(err)
				}
			},
			kind: rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_ACTIVATED,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			if err := e.install(ctxT(t), "acme"); err != nil {
				t.Fatal(err)
			}
			seen, onNotice := newNotices()
			c := e.watchingClient(t, onNotice)
			cached := mustToken(t, c, "acme")

			tc.act(t, e, cached)
			seen.await(t, "acme", tc.kind)

			// Still unexpired, but no longer served from the cache.
			tok, err := c.Token(ctxT(t), "acme")
			if got := e.calls.Load(); got != 2 {
				t.Fatalf("%d server calls: the notice did not drop the cached token", got)
			}
			if tc.wantReauth {
				if !errors.Is(err, client.ErrReauthenticationRequired) {
					t.Fatalf("after the revocation: %v, %v; want ErrReauthenticationRequired", tok, err)
				}
				return
			}
			if err != nil || tok.FamilyID == cached.FamilyID || !e.sim.AccessTokenActive(tok.AccessToken) {
				t.Fatalf("after the reauthentication: %v, %v; want a token of the new family (not %s)", tok, err, cached.FamilyID)
			}
		})
	}
}

// The watch survives a server restart: it resumes from its cursor and gets
// the notices it missed; when the server's notice log no longer reaches
// back that far, it drops every cached token and starts over.
func TestWatchResumesAfterRestart(t *testing.T) {
	for _, tc := range []struct {
		name      string
		retention int
		// whileDown changes acme's family while the Client is disconnected.
		whileDown func(ctx context.Context, e *env, b *broker.Broker) error
		// cursorExpired: the log keeps fewer notices than were missed.
		cursorExpired bool
	}{
		{
			name: "missed revocation replayed", retention: 100,
			whileDown: func(ctx context.Context, _ *env, b *broker.Broker) error {
				_, err := b.RevokeCredential(ctx, "acme", "while the client was away")
				return err
			},
		},
		{
			name: "cursor expired", retention: 1, cursorExpired: true,
			whileDown: func(ctx context.Context, e *env, b *broker.Broker) error {
				if _, err := b.RevokeCredential(ctx, "acme", "while the client was away"); err != nil {
					return err
				}
				rt, err := e.sim.IssueRefreshToken(simClientID, nil)
				if err != nil {
					return err
				}
				_, err = b.ImportRefreshToken(ctx, "acme", rt)
				return err
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, option.WithNoticeRetention(tc.retention))
			if err := e.install(ctxT(t), "acme"); err != nil {
				t.Fatal(err)
			}
			seen, onNotice := newNotices()
			c := e.watchingClient(t, onNotice)
			cached := mustToken(t, c, "acme")

			err := e.restart(func(b *broker.Broker) error { return tc.whileDown(ctxT(t), e, b) })
			if err != nil {
				t.Fatal(err)
			}
			if !tc.cursorExpired {
				seen.await(t, "acme", rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_REVOKED)
				if _, err := c.Token(ctxT(t), "acme"); !errors.Is(err, client.ErrReauthenticationRequired) || e.calls.Load() != 2 {
					t.Fatalf("after the replayed revocation: %v (%d server calls), want ErrReauthenticationRequired from the server", err, e.calls.Load())
				}
				return
			}
			if err := c.AwaitWatchStarts(ctxT(t), 2); err != nil {
				t.Fatalf("the watch did not start over: %v", err)
			}
			if len(seen) != 0 {
				t.Fatalf("notices replayed from an expired cursor: %v", <-seen)
			}
			tok := mustToken(t, c, "acme")
			if tok.FamilyID == cached.FamilyID || e.calls.Load() != 2 || !e.sim.AccessTokenActive(tok.AccessToken) {
				t.Fatalf("after the resynchronisation: %v (%d server calls), want the new family's token from the server (old family %s)", tok, e.calls.Load(), cached.FamilyID)
			}
		})
	}
}

// Without the watch the Client still caches, and still learns of a
// revocation from the server when it asks.
func TestWithoutRevocationWatch(t *testing.T) {
	e := newEnv(t)
	if err := e.install(ctxT(t), "acme"); err != nil {
		t.Fatal(err)
	}
	c := e.newClient(t, client.WithoutRevocationWatch())
	first := mustToken(t, c, "acme")
	if tok := mustToken(t, c, "acme"); tok != first || e.calls.Load() != 1 {
		t.Fatalf("second call: %v, %d server calls; want the cached token", tok, e.calls.Load())
	}
	if n := e.subscribers(); n != 0 {
		t.Fatalf("%d watch streams at the server, want none", n)
	}
}

// Watch, the watch on its own (what `rotavault watch` runs): it resumes
// across a restart with its cursor, hands over each notice once, and ends
// only when resuming cannot help — here, a cursor the notice log no longer
// holds.
func TestWatchFollowsAndEndsOnExpiredCursor(t *testing.T) {
	e := newEnv(t, option.WithNoticeRetention(1))
	if err := e.install(ctxT(t), "acme"); err != nil {
		t.Fatal(err)
	}
	events := make(chan *rotavaultv1.WatchRevocationsResponse, 16)
	broken := make(chan error, 16)
	ended := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		ended <- client.Watch(ctx, e.conn, client.WatchConfig{
			CredentialIDs: []string{"acme"},
			OnEvent:       func(m *rotavaultv1.WatchRevocationsResponse) { events <- m },
			OnBroken:      func(err error, _ time.Duration) { broken <- err },
		}, client.WithBackoff(5*time.Millisecond, 100*time.Millisecond))
	}()
	next := func() *rotavaultv1.WatchRevocationsResponse {
		t.Helper()
		select {
		case m := <-events:
			return m
		case err := <-ended:
			t.Fatalf("Watch ended: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("no event")
		}
		return nil
	}
	if next().GetStarted() == nil {
		t.Fatal("the first event is not the start")
	}
	// One notice missed during a restart fits the log: replayed once.
	if err := e.restart(func(b *broker.Broker) error {
		_, err := b.RevokeCredential(ctxT(t), "acme", "while the watch was away")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if m := next(); m.GetStarted() == nil {
		t.Fatalf("after the restart: %v, want the resumed start", m)
	}
	if n := next().GetNotice(); n.GetKind() != rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_REVOKED {
		t.Fatalf("after the restart: %v, want the revocation made meanwhile", n)
	}
	if len(broken) == 0 {
		t.Error("OnBroken was not told of the restart")
	}
	// Two notices missed, one kept: the cursor expired; Watch ends.
	if err := e.restart(func(b *broker.Broker) error {
		rt, err := e.sim.IssueRefreshToken(simClientID, nil)
		if err != nil {
			return err
		}
		if _, err := b.ImportRefreshToken(ctxT(t), "acme", rt); err != nil {
			return err
		}
		_, err = b.RevokeCredential(ctxT(t), "acme", "again")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ended:
		if status.Code(err) != codes.OutOfRange {
			t.Fatalf("Watch ended with %v, want OUT_OF_RANGE", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not end on an expired cursor")
	}
}
