package server

import (
	"encoding/base64"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// A page token the server never gave is INVALID_ARGUMENT, not an empty
// last page: against `serve` with 20,000 credentials, "garbage" (valid
// base64 of bytes no credential id has) listed nothing and said OK, so a
// client would believe the listing complete.
func TestListCredentialsRefusesPageTokensItNeverGave(t *testing.T) {
	e := newCatalogEnv(t)
	e.install("cred-a")
	e.install("cred-b")
	first, err := e.admin.ListCredentials(testCtx(t), &rotavaultv1.ListCredentialsRequest{PageSize: 1})
	if err != nil || first.GetNextPageToken() == "" {
		t.Fatalf("first page: %v, next %q; want a next page", err, first.GetNextPageToken())
	}
	rest, err := e.admin.ListCredentials(testCtx(t), &rotavaultv1.ListCredentialsRequest{PageToken: first.GetNextPageToken()})
	if err != nil || len(rest.GetCredentials()) != 1 || rest.GetCredentials()[0].GetCredentialId() != "cred-b" {
		t.Fatalf("next page: %v, %v; want cred-b", err, rest.GetCredentials())
	}
	for name, tok := range map[string]string{
		"base64 of bytes":         "garbage",
		"base64 of a bad id":      base64.RawURLEncoding.EncodeToString([]byte("Cred A")),
		"base64 of invalid UTF-8": base64.RawURLEncoding.EncodeToString([]byte{0xff, 0xfe}),
		"not base64":              "%%%",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := e.admin.ListCredentials(testCtx(t), &rotavaultv1.ListCredentialsRequest{PageToken: tok})
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("ListCredentials(page_token %q): %v; want INVALID_ARGUMENT", tok, err)
			}
		})
	}
}
