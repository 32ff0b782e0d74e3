package integration

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/server"
)

// A wrong client secret must not destroy a refresh token the provider still
// accepts: fixing the secret resumes the same family.
func TestWrongClientSecretKeepsTheFamily(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.installSalesforce("acme")
	first := e.token("acme")
	update := func(secret string) {
		t.Helper()
		if _, err := e.admin.UpdateCredential(ctxT(t), &rotavaultv1.UpdateCredentialRequest{CredentialId: "acme",
			Spec: &rotavaultv1.CredentialSpec{ClientSecret: secret}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"client_secret"}}}); err != nil {
			t.Fatal(err)
		}
	}
	update("a-typo")
	e.expire()
	_, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
	wantCode(t, err, codes.FailedPrecondition, server.ReasonProviderRejectedClient)
	update(simClientSecret)
	if tok := e.token("acme"); tok.GetFamilyId() != first.GetFamilyId() || e.sim.Stats().FamiliesRevoked != 0 {
		t.Fatalf("after fixing the secret: %+v", tok)
	}
}

// Shutting down while a refresh is at the provider finishes the rotation
// and stores it, even when no caller waits for it any more.
func TestShutdownFinishesRotationInFlight(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.installSalesforce("acme")
	first := e.token("acme")
	e.expire()
	e.sim.SetLatency(300 * time.Millisecond)
	before := e.sim.Stats()
	ctx, cancel := context.WithCancel(context.Background())
	called := make(chan struct{})
	go func() {
		defer close(called)
		_, _ = e.vault.GetAccessToken(ctx, &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
	}()
	if err := e.sim.WaitForTokenRequests(ctxT(t), before.TokenRequests+1); err != nil {
		t.Fatal(err)
	}
	cancel() // the caller gives up...
	<-called
	e.stop() // ...and the server stops while the provider is still answering
	if got := e.sim.Stats().Rotations; got != before.Rotations+1 {
		t.Fatalf("the refresh in flight was abandoned at shutdown: %d rotations, want %d", got, before.Rotations+1)
	}
	e.sim.SetLatency(0)
	e.start()
	tok := e.token("acme")
	if tok.GetFamilyId() != first.GetFamilyId() || tok.GetGeneration() != first.GetGeneration()+1 {
		t.Fatalf("after restart: generation %d, want the rotation stored at shutdown (%d)", tok.GetGeneration(), first.GetGeneration()+1)
	}
	if s := e.sim.Stats(); s.RefreshRequests != before.RefreshRequests+1 || s.ReuseDetections != 0 {
		t.Fatalf("provider saw %+v", s)
	}
}
