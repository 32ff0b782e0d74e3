package vaultstore_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	vault "github.com/hashicorp/vault/api"

	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/vaultstore"
)

// These tests run the real Vault and its real kubernetes auth method (JWT
// parsing, role bindings, the TokenReview call, token issue). Only the
// Kubernetes API server is a stand-in (vaulttest.KubernetesAPI): none can
// run on the test machines, and Vault needs one to review each JWT.

// writeServiceAccountToken replaces the token file's contents atomically, as
// the kubelet does when it rotates a projected token (it swaps a symlink):
// a login never reads a half-written token. The trailing newline is what a
// token file written by hand (echo "$JWT" > file) carries; it must not break
// the login.
func writeServiceAccountToken(t *testing.T, path, jwt string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(jwt+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func kubernetesStore(t *testing.T, srv *vaulttest.Server, role, tokenFile string) (*vaultstore.Store, error) {
	t.Helper()
	login, err := vaultstore.Kubernetes(role, tokenFile, "kubernetes")
	if err != nil {
		t.Fatal(err)
	}
	s, err := vaultstore.New(context.Background(), vaultstore.Config{Client: tokenlessClient(t, srv), Login: login})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, nil
}

func TestKubernetesLoginAtStartupAndAgainWithTheRotatedTokenWhenRevoked(t *testing.T) {
	srv := vaulttest.StartDev(t)
	root := srv.RootClient(t)
	api := vaulttest.StartKubernetesAPI(t)
	sa := vaulttest.ServiceAccount{Namespace: "payments", Name: "rotavault", UID: "5d1f2a8e-3c4b-4e59-9a7d-0f6e1b2c3d4e"}
	role := srv.Kubernetes(t, api, sa, "1h", "2h")
	tokenFile := filepath.Join(t.TempDir(), "token")
	ctx := context.Background()

	// The stand-in decides: a token it no longer vouches for is refused by
	// Vault, so the logins below succeed because of the reviews, not
	// despite them.
	stale := api.IssueToken(t, sa)
	api.Invalidate(stale)
	writeServiceAccountToken(t, tokenFile, stale)
	_, err := kubernetesStore(t, srv, role, tokenFile)
	var refused *vault.ResponseError
	if !errors.As(err, &refused) || refused.StatusCode != http.StatusForbidden {
		t.Fatalf("New with a token the API server refuses = %v, want Vault's 403", err)
	}
	if strings.Contains(err.Error(), stale) {
		t.Fatal("the login error contains the service-account token")
	}

	first := api.IssueToken(t, sa)
	writeServiceAccountToken(t, tokenFile, first)
	s, err := kubernetesStore(t, srv, role, tokenFile)
	if err != nil {
		t.Fatalf("New with Kubernetes login: %v", err)
	}
	v, err := s.Put(ctx, "families/acme", []byte("one"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if rec, err := s.Get(ctx, "families/acme"); err != nil || string(rec.Value) != "one" {
		t.Fatalf("Get = %q, %v; want one", rec.Value, err)
	}
	if got := s.Logins(); got != 1 {
		t.Fatalf("logins = %d, want 1", got)
	}
	if got, want := api.Reviewed(), []string{stale, first}; !slices.Equal(got, want) {
		t.Fatalf("the API server reviewed %d tokens, want the stale one then the first", len(got))
	}

	// Kubernetes rotates the projected token: a new one in the file, and
	// the old one expires. A login with the token read at start-up would
	// now be refused.
	second := api.IssueToken(t, sa)
	writeServiceAccountToken(t, tokenFile, second)
	api.Invalidate(first)
	// Revoke every token the kubernetes method issued: the store's token is
	// dead now.
	if err := root.Sys().RevokePrefix("auth/kubernetes/"); err != nil {
		t.Fatal(err)
	}
	if v, err = s.Put(ctx, "families/acme", []byte("two"), v); err != nil {
		t.Fatalf("a call after the token was revoked failed: %v", err)
	}
	if got := s.Logins(); got != 2 {
		t.Fatalf("logins = %d, want 2", got)
	}
	reviewed := api.Reviewed()
	if len(reviewed) != 3 || reviewed[2] != second {
		t.Fatalf("the login after revocation did not present the rotated token (%d reviews; last is the rotated one: %v)",
			len(reviewed), len(reviewed) > 0 && reviewed[len(reviewed)-1] == second)
	}
	if rec, err := s.Get(ctx, "families/acme"); err != nil || string(rec.Value) != "two" || rec.Version != v {
		t.Fatalf("Get = %q version %d, %v; want two version %d", rec.Value, rec.Version, err, v)
	}
}
