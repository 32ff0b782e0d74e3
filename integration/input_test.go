package integration

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// TestBadInputChangesNothing sends malformed requests to every RPC and checks
// that each gets a clear status and that neither the store nor the provider
// saw anything.
func TestBadInputChangesNothing(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.installSalesforce("acme")
	tok := e.token("acme")
	before, err := e.admin.GetCredential(ctxT(t), &rotavaultv1.GetCredentialRequest{CredentialId: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	simBefore := e.sim.Stats()

	badIDs := map[string]string{
		"empty": "", "oversized": strings.Repeat("a", 129), "uppercase": "Acme", "slash": "a/b",
		"dot-dot": "..", "leading dot": ".acme", "space": "ac me", "control": "ac\x00me", "unicode": "acmé",
	}
	for name, id := range badIDs {
		t.Run("id "+name, func(t *testing.T) {
			_, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: id})
			wantCode(t, err, codes.InvalidArgument, "")
			_, err = e.admin.CreateCredential(ctxT(t), &rotavaultv1.CreateCredentialRequest{CredentialId: id, Spec: e.salesforceSpec()})
			wantCode(t, err, codes.InvalidArgument, "")
			_, err = e.admin.DeleteCredential(ctxT(t), &rotavaultv1.DeleteCredentialRequest{CredentialId: id})
			wantCode(t, err, codes.InvalidArgument, "")
			if id != "" { // empty lists every credential's consumers
				_, err = e.admin.ListConsumers(ctxT(t), &rotavaultv1.ListConsumersRequest{CredentialId: id})
				wantCode(t, err, codes.InvalidArgument, "")
			}
			_, err = e.vault.Reauthenticate(ctxT(t), &rotavaultv1.ReauthenticateRequest{CredentialId: id,
				Flow: &rotavaultv1.ReauthenticateRequest_RefreshTokenImport{RefreshTokenImport: &rotavaultv1.RefreshTokenImport{RefreshToken: "x"}}})
			wantCode(t, err, codes.InvalidArgument, "")
		})
	}

	specWith := func(m func(*rotavaultv1.CredentialSpec)) *rotavaultv1.CredentialSpec {
		s := e.salesforceSpec()
		m(s)
		return s
	}
	badSpecs := map[string]*rotavaultv1.CredentialSpec{
		"no spec":             nil,
		"http off loopback":   specWith(func(s *rotavaultv1.CredentialSpec) { s.BaseUrl = "http://login.example.com" }),
		"ftp scheme":          specWith(func(s *rotavaultv1.CredentialSpec) { s.BaseUrl = "ftp://127.0.0.1/x" }),
		"not a url":           specWith(func(s *rotavaultv1.CredentialSpec) { s.BaseUrl = "::not a url" }),
		"userinfo":            specWith(func(s *rotavaultv1.CredentialSpec) { s.BaseUrl = "https://user:pw@example.com" }),
		"oversized url":       specWith(func(s *rotavaultv1.CredentialSpec) { s.BaseUrl = "https://example.com/" + strings.Repeat("a", 3000) }),
		"no client id":        specWith(func(s *rotavaultv1.CredentialSpec) { s.ClientId = "" }),
		"scope with space":    specWith(func(s *rotavaultv1.CredentialSpec) { s.Scopes = []string{"api refresh_token"} }),
		"negative lifetime":   specWith(func(s *rotavaultv1.CredentialSpec) { s.AccessTokenLifetime = durationpb.New(-time.Second) }),
		"oauth2 no token url": specWith(func(s *rotavaultv1.CredentialSpec) { s.ProviderKind = rotavaultv1.ProviderKind_PROVIDER_KIND_OAUTH2 }),
	}
	for name, spec := range badSpecs {
		t.Run("spec "+name, func(t *testing.T) {
			_, err := e.admin.CreateCredential(ctxT(t), &rotavaultv1.CreateCredentialRequest{CredentialId: "new", Spec: spec})
			wantCode(t, err, codes.InvalidArgument, "")
			_, err = e.admin.UpdateCredential(ctxT(t), &rotavaultv1.UpdateCredentialRequest{CredentialId: "acme", Spec: spec,
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"base_url", "client_id", "scopes", "access_token_lifetime"}}})
			// The mask leaves provider_kind alone, so only the other cases
			// make an invalid update.
			if spec != nil && name != "oauth2 no token url" {
				wantCode(t, err, codes.InvalidArgument, "")
			}
		})
	}

	cases := []struct {
		name   string
		call   func() error
		code   codes.Code
		reason string
	}{
		{"unknown credential", func() error {
			_, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "nobody"})
			return err
		}, codes.NotFound, ""},
		{"describe unknown", func() error {
			_, err := e.admin.GetCredential(ctxT(t), &rotavaultv1.GetCredentialRequest{CredentialId: "nobody"})
			return err
		}, codes.NotFound, ""},
		{"duplicate create", func() error {
			_, err := e.admin.CreateCredential(ctxT(t), &rotavaultv1.CreateCredentialRequest{CredentialId: "acme", Spec: e.salesforceSpec()})
			return err
		}, codes.AlreadyExists, ""},
		{"negative min lifetime", func() error {
			_, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme", MinRemainingLifetime: durationpb.New(-time.Second)})
			return err
		}, codes.InvalidArgument, ""},
		{"min lifetime beyond the token's life", func() error {
			_, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme", MinRemainingLifetime: durationpb.New(accessLifetime)})
			return err
		}, codes.InvalidArgument, "MIN_LIFETIME_UNATTAINABLE"},
		{"malformed fingerprint", func() error {
			_, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme",
				RejectedToken: &rotavaultv1.RejectedToken{Token: &rotavaultv1.RejectedToken_Fingerprint{Fingerprint: "zz"}}})
			return err
		}, codes.InvalidArgument, ""},
		{"empty rejected token", func() error {
			_, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme", RejectedToken: &rotavaultv1.RejectedToken{}})
			return err
		}, codes.InvalidArgument, ""},
		{"no flow", func() error {
			_, err := e.vault.Reauthenticate(ctxT(t), &rotavaultv1.ReauthenticateRequest{CredentialId: "acme"})
			return err
		}, codes.InvalidArgument, ""},
		{"empty imported token", func() error {
			_, err := e.vault.Reauthenticate(ctxT(t), &rotavaultv1.ReauthenticateRequest{CredentialId: "acme",
				Flow: &rotavaultv1.ReauthenticateRequest_RefreshTokenImport{RefreshTokenImport: &rotavaultv1.RefreshTokenImport{}}})
			return err
		}, codes.InvalidArgument, ""},
		{"redirect off loopback over http", func() error {
			_, err := e.vault.Reauthenticate(ctxT(t), &rotavaultv1.ReauthenticateRequest{CredentialId: "acme",
				Flow: &rotavaultv1.ReauthenticateRequest_AuthorizationCodeStart{AuthorizationCodeStart: &rotavaultv1.AuthorizationCodeStart{RedirectUri: "http://evil.example.com/cb"}}})
			return err
		}, codes.InvalidArgument, ""},
		{"scopes without refresh_token", func() error {
			_, err := e.vault.Reauthenticate(ctxT(t), &rotavaultv1.ReauthenticateRequest{CredentialId: "acme",
				Flow: &rotavaultv1.ReauthenticateRequest_AuthorizationCodeStart{AuthorizationCodeStart: &rotavaultv1.AuthorizationCodeStart{RedirectUri: callbackURI, Scopes: []string{"api"}}}})
			return err
		}, codes.InvalidArgument, ""},
		{"forged state", func() error {
			_, err := e.vault.Reauthenticate(ctxT(t), &rotavaultv1.ReauthenticateRequest{CredentialId: "acme",
				Flow: &rotavaultv1.ReauthenticateRequest_AuthorizationCodeComplete{AuthorizationCodeComplete: &rotavaultv1.AuthorizationCodeComplete{State: strings.Repeat("A", 43), Code: "c"}}})
			return err
		}, codes.InvalidArgument, ""},
		{"empty update mask", func() error {
			_, err := e.admin.UpdateCredential(ctxT(t), &rotavaultv1.UpdateCredentialRequest{CredentialId: "acme", Spec: e.salesforceSpec()})
			return err
		}, codes.InvalidArgument, ""},
		{"provider kind change", func() error {
			_, err := e.admin.UpdateCredential(ctxT(t), &rotavaultv1.UpdateCredentialRequest{CredentialId: "acme", Spec: e.salesforceSpec(),
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"provider_kind"}}})
			return err
		}, codes.InvalidArgument, ""},
		{"unknown mask path", func() error {
			_, err := e.admin.UpdateCredential(ctxT(t), &rotavaultv1.UpdateCredentialRequest{CredentialId: "acme", Spec: e.salesforceSpec(),
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"refresh_token"}}})
			return err
		}, codes.InvalidArgument, ""},
		{"page size", func() error {
			_, err := e.admin.ListCredentials(ctxT(t), &rotavaultv1.ListCredentialsRequest{PageSize: 5000})
			return err
		}, codes.InvalidArgument, ""},
		{"consumers page size", func() error {
			_, err := e.admin.ListConsumers(ctxT(t), &rotavaultv1.ListConsumersRequest{PageSize: 5000})
			return err
		}, codes.InvalidArgument, ""},
		{"consumers page token", func() error {
			_, err := e.admin.ListConsumers(ctxT(t), &rotavaultv1.ListConsumersRequest{PageToken: "!!"})
			return err
		}, codes.InvalidArgument, ""},
		{"consumers of unknown credential", func() error {
			_, err := e.admin.ListConsumers(ctxT(t), &rotavaultv1.ListConsumersRequest{CredentialId: "nobody"})
			return err
		}, codes.NotFound, ""},
		{"malformed cursor", func() error {
			s, err := e.vault.WatchRevocations(ctxT(t), &rotavaultv1.WatchRevocationsRequest{Cursor: "!!"})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}, codes.InvalidArgument, ""},
		{"oversized message", func() error {
			_, err := e.vault.Reauthenticate(ctxT(t), &rotavaultv1.ReauthenticateRequest{CredentialId: "acme",
				Flow: &rotavaultv1.ReauthenticateRequest_RefreshTokenImport{RefreshTokenImport: &rotavaultv1.RefreshTokenImport{RefreshToken: strings.Repeat("x", 100<<10)}}})
			return err
		}, codes.ResourceExhausted, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { wantCode(t, c.call(), c.code, c.reason) })
	}

	after, err := e.admin.GetCredential(ctxT(t), &rotavaultv1.GetCredentialRequest{CredentialId: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	if after.GetCredential().String() != before.GetCredential().String() {
		t.Fatalf("bad input changed the credential:\nbefore %v\nafter  %v", before.GetCredential(), after.GetCredential())
	}
	list, err := e.admin.ListCredentials(ctxT(t), &rotavaultv1.ListCredentialsRequest{})
	if err != nil || len(list.GetCredentials()) != 1 {
		t.Fatalf("credentials after bad input: %v, %v", list.GetCredentials(), err)
	}
	if got := e.token("acme"); got.GetAccessToken() != tok.GetAccessToken() {
		t.Fatal("bad input changed the access token")
	}
	if s := e.sim.Stats(); s != simBefore {
		t.Fatalf("bad input reached the provider: before %+v after %+v", simBefore, s)
	}
}
