package integration

import (
	"net"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/provider"
)

func TestRevokeCredentialAgainstSalesforce(t *testing.T) {
	e := newEnv(t, envOptions{})
	oldRT := e.installSalesforce("acme")
	tok := e.token("acme")
	stream, _ := e.watch(ctxT(t), "", "acme")

	resp, err := e.vault.RevokeCredential(ctxT(t), &rotavaultv1.RevokeCredentialRequest{CredentialId: "acme", Reason: "INC-42: laptop stolen"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetFamilyId() != tok.GetFamilyId() || resp.GetGeneration() != tok.GetGeneration() ||
		resp.GetProviderRevocation() != rotavaultv1.ProviderRevocation_PROVIDER_REVOCATION_CONFIRMED || resp.GetAlreadyRevoked() {
		t.Fatalf("response = %v (token family %s generation %d)", resp, tok.GetFamilyId(), tok.GetGeneration())
	}
	// The simulator saw the revocation: the family, and every token of it, is dead.
	if e.sim.RevokeFamilyOf(oldRT) {
		t.Fatal("the family is still alive at the provider")
	}
	if e.sim.AccessTokenActive(tok.GetAccessToken()) {
		t.Fatal("the access token is still alive at the provider")
	}
	n := nextNotice(t, stream)
	if n.GetKind() != rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_REVOKED || n.GetReason() != rotavaultv1.RevocationReason_REVOCATION_REASON_ADMIN_REVOKED ||
		n.GetFamilyId() != tok.GetFamilyId() || n.GetProviderRevocation() != rotavaultv1.ProviderRevocation_PROVIDER_REVOCATION_CONFIRMED {
		t.Fatalf("notice = %v", n)
	}
	_, err = e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
	wantCode(t, err, codes.FailedPrecondition, "REAUTHENTICATION_REQUIRED")

	// Idempotent, with no second provider call.
	revocations := e.sim.Stats().Revocations
	again, err := e.vault.RevokeCredential(ctxT(t), &rotavaultv1.RevokeCredentialRequest{CredentialId: "acme", Reason: "again"})
	if err != nil || !again.GetAlreadyRevoked() || again.GetFamilyId() != tok.GetFamilyId() {
		t.Fatalf("second revocation = %v, %v", again, err)
	}
	if e.sim.Stats().Revocations != revocations {
		t.Fatal("a second revocation reached the provider")
	}
	_, err = e.vault.RevokeCredential(ctxT(t), &rotavaultv1.RevokeCredentialRequest{CredentialId: "acme"})
	wantCode(t, err, codes.InvalidArgument, "")

	// Reauthenticate installs a new family.
	rt, err := e.sim.IssueRefreshToken(simClientID, []string{"api", "refresh_token"})
	if err != nil {
		t.Fatal(err)
	}
	act := e.importToken("acme", rt)
	if got := e.token("acme"); got.GetFamilyId() != act.GetFamilyId() || got.GetFamilyId() == tok.GetFamilyId() {
		t.Fatalf("token after reauthentication from family %s, want %s", got.GetFamilyId(), act.GetFamilyId())
	}
}

func TestRevokeCredentialProviderUnreachable(t *testing.T) {
	e := newEnv(t, envOptions{})
	// A loopback port nobody listens on: connection refused.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String() + "/revoke"
	_ = l.Close()
	oldRT := e.installSalesforce("acme", func(s *rotavaultv1.CredentialSpec) { s.RevocationUrl = dead })
	tok := e.token("acme")
	stream, _ := e.watch(ctxT(t), "", "acme")

	resp, err := e.vault.RevokeCredential(ctxT(t), &rotavaultv1.RevokeCredentialRequest{CredentialId: "acme", Reason: "suspected leak"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetProviderRevocation() != rotavaultv1.ProviderRevocation_PROVIDER_REVOCATION_UNCONFIRMED {
		t.Fatalf("response = %v, want unconfirmed", resp)
	}
	if n := nextNotice(t, stream); n.GetReason() != rotavaultv1.RevocationReason_REVOCATION_REASON_ADMIN_REVOKED ||
		n.GetProviderRevocation() != rotavaultv1.ProviderRevocation_PROVIDER_REVOCATION_UNCONFIRMED {
		t.Fatalf("notice = %v", n)
	}
	// Revoked locally: no token served, none presented for a refresh.
	requests := e.sim.Stats().TokenRequests
	_, err = e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
	wantCode(t, err, codes.FailedPrecondition, "REAUTHENTICATION_REQUIRED")
	if e.sim.Stats().TokenRequests != requests {
		t.Fatal("the revoked family's refresh token was presented to the provider")
	}
	if !e.sim.AccessTokenActive(tok.GetAccessToken()) {
		t.Fatal("the provider revoked the family although unreachable (test setup)")
	}

	// The operator fixes the endpoint and retries: the provider revokes now.
	if _, err := e.admin.UpdateCredential(ctxT(t), &rotavaultv1.UpdateCredentialRequest{CredentialId: "acme",
		Spec:       &rotavaultv1.CredentialSpec{RevocationUrl: provider.SalesforceEndpoint(e.sim.URL()).RevocationURL},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"revocation_url"}}}); err != nil {
		t.Fatal(err)
	}
	again, err := e.vault.RevokeCredential(ctxT(t), &rotavaultv1.RevokeCredentialRequest{CredentialId: "acme", Reason: "retry at the provider"})
	if err != nil {
		t.Fatal(err)
	}
	if !again.GetAlreadyRevoked() || again.GetProviderRevocation() != rotavaultv1.ProviderRevocation_PROVIDER_REVOCATION_CONFIRMED {
		t.Fatalf("retry = %v", again)
	}
	if e.sim.RevokeFamilyOf(oldRT) || e.sim.AccessTokenActive(tok.GetAccessToken()) {
		t.Fatal("the family is still alive at the provider after the retry")
	}
}
