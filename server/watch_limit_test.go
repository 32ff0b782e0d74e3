package server

import (
	"strings"
	"testing"

	"google.golang.org/grpc"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// A policy rule's max_watch_streams caps each identity it matches: beyond
// it WatchRevocations is RESOURCE_EXHAUSTED with TOO_MANY_WATCH_STREAMS and
// a retry delay, while other identities still watch.
func TestPolicyRuleCapsWatchStreamsPerIdentity(t *testing.T) {
	e := newAuthEnv(t, authEnvOptions{})
	e.seed()
	writeFile(t, e.policyFile, []byte(strings.Replace(testPolicy,
		`"identity": "spiffe://rotavault.test/ns/payments/*", "role": "consumer", "credentials": ["cred-a"]`,
		`"identity": "spiffe://rotavault.test/ns/payments/*", "role": "consumer", "credentials": ["cred-a"], "max_watch_streams": 2`, 1)))
	if err := e.reloader.Reload(); err != nil {
		t.Fatal(err)
	}
	watch := func(conn *grpc.ClientConn) error {
		s, err := rotavaultv1.NewTokenVaultServiceClient(conn).WatchRevocations(testCtx(t), &rotavaultv1.WatchRevocationsRequest{CredentialIds: []string{"cred-a"}})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}
	payments := e.as(idPayments, false)
	for i := range 2 {
		if err := watch(payments); err != nil {
			t.Fatalf("watch %d within max_watch_streams: %v", i+1, err)
		}
	}
	assertRefusal(t, watch(payments), ReasonTooManyWatchStreams)
	if err := watch(e.as(idAdmin, false)); err != nil {
		t.Fatalf("another identity's watch: %v", err)
	}
}
