package vaultstore_test

import (
	"context"
	"errors"
	"testing"

	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/vaultstore"
)

// TestTLSFromEnvironment configures the store as operators do: VAULT_ADDR,
// VAULT_TOKEN and VAULT_CACERT, with no client built by hand.
func TestTLSFromEnvironment(t *testing.T) {
	srv, caCert := vaulttest.StartDevTLS(t)
	t.Setenv("VAULT_ADDR", srv.Addr)
	t.Setenv("VAULT_TOKEN", srv.Token)
	ctx := context.Background()

	t.Run("without the CA the server is not trusted", func(t *testing.T) {
		t.Setenv("VAULT_CACERT", "")
		if _, err := vaultstore.New(ctx, vaultstore.Config{}); !errors.Is(err, vaultstore.ErrUnreachable) {
			t.Fatalf("New = %v, want ErrUnreachable", err)
		}
	})
	t.Run("VAULT_CACERT is honoured", func(t *testing.T) {
		t.Setenv("VAULT_CACERT", caCert)
		s, err := vaultstore.New(ctx, vaultstore.Config{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := s.Put(ctx, "families/tls", []byte("x"), 0); err != nil {
			t.Fatal(err)
		}
	})
}
