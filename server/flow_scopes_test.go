package server

import (
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/rotavault/rotavault/broker/authflow"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// An operator reauthenticates a credential; it does not choose what the
// new tokens may do. A flow asking for scopes the credential was not
// configured with is refused unless an admin starts it.
func TestOnlyAdminsWidenAFlowsScopes(t *testing.T) {
	e := newAuthEnv(t, authEnvOptions{})
	e.seed() // cred-a: scopes api refresh_token; ops is its operator
	start := func(conn *grpc.ClientConn, scopes ...string) error {
		_, err := rotavaultv1.NewTokenVaultServiceClient(conn).Reauthenticate(testCtx(t), &rotavaultv1.ReauthenticateRequest{CredentialId: "cred-a",
			Flow: &rotavaultv1.ReauthenticateRequest_AuthorizationCodeStart{AuthorizationCodeStart: &rotavaultv1.AuthorizationCodeStart{
				RedirectUri: "http://127.0.0.1:1/cb", Scopes: scopes}}})
		return err
	}
	ops, admin := e.as(idOps, false), e.as(idAdmin, false)

	for _, scopes := range [][]string{{"full", "refresh_token"}, {"api refresh_token admin:org"}} {
		err := start(ops, scopes...)
		if status.Code(err) != codes.InvalidArgument || errorReason(err) != authflow.ScopeNotAllowed {
			t.Errorf("an operator asking for %q: %v; want INVALID_ARGUMENT, %s", scopes, err, authflow.ScopeNotAllowed)
		}
	}
	if err := start(ops, "refresh_token", "api"); err != nil {
		t.Errorf("an operator asking for the credential's own scopes: %v", err)
	}
	if err := start(ops); err != nil {
		t.Errorf("an operator asking for no scopes (the credential's): %v", err)
	}
	if err := start(admin, "full", "refresh_token"); err != nil {
		t.Errorf("an admin widening the scopes: %v", err)
	}
}

func errorReason(err error) string {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}
