package vaultstore_test

import (
	"context"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/vaultstore"
)

func appRoleStore(t *testing.T, srv *vaulttest.Server, roleID, secretFile string) *vaultstore.Store {
	t.Helper()
	login, err := vaultstore.AppRole(roleID, secretFile, "")
	if err != nil {
		t.Fatal(err)
	}
	return newStore(t, vaultstore.Config{Client: tokenlessClient(t, srv), Login: login})
}

// tokenlessClient is a client of srv without a token: the store's login
// must provide one.
func tokenlessClient(t *testing.T, srv *vaulttest.Server) *vault.Client {
	t.Helper()
	client := srv.Client(t)
	client.ClearToken()
	return client
}

func TestAppRoleRevokedTokenLogsInAgainWithoutFailingCallers(t *testing.T) {
	srv := vaulttest.StartDev(t)
	root := srv.RootClient(t)
	roleID, secretFile := srv.AppRole(t, "1h", "2h")
	s := appRoleStore(t, srv, roleID, secretFile)
	ctx := context.Background()
	v, err := s.Put(ctx, "families/acme", []byte("one"), 0)
	if err != nil {
		t.Fatal(err)
	}
	// Revoke every token AppRole issued: the store's token is dead now.
	if err := root.Sys().RevokePrefix("auth/approle/"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "families/acme", []byte("two"), v); err != nil {
		t.Fatalf("a call after the token was revoked failed: %v", err)
	}
	if got := s.Logins(); got != 2 {
		t.Fatalf("logins = %d, want 2", got)
	}
}

func TestAppRoleTokenIsRenewedThenReplacedAtMaxTTL(t *testing.T) {
	srv := vaulttest.StartDev(t)
	// Tokens live 2s and at most 4s: renewal, then a fresh login, within
	// seconds.
	roleID, secretFile := srv.AppRole(t, "2s", "4s")
	s := appRoleStore(t, srv, roleID, secretFile)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	v, err := s.Put(ctx, "families/acme", []byte("0"), 0)
	if err != nil {
		t.Fatal(err)
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for s.Logins() < 3 {
		select {
		case <-ctx.Done():
			t.Fatalf("only %d logins within the deadline", s.Logins())
		case <-tick.C:
		}
		if v, err = s.Put(ctx, "families/acme", []byte("x"), v); err != nil {
			t.Errorf("call failed across token renewal: %v", err)
		}
	}
}
