package vaultstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	vault "github.com/hashicorp/vault/api"

	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/storetest"
	"github.com/rotavault/rotavault/vaultstore"
)

// runContract runs the store contract against cfg, each run under a fresh
// prefix below rotavault/prefix (where the policy allows it).
func runContract(t *testing.T, prefix string, cfg vaultstore.Config) {
	n := 0
	storetest.Run(t, func(t *testing.T) store.Store {
		n++
		cfg := cfg
		cfg.Prefix = fmt.Sprintf("%s/%s/run%d", vaultstore.DefaultPrefix, prefix, n)
		return newStore(t, cfg)
	})
}

// newStore opens a store that is closed when t ends.
func newStore(t *testing.T, cfg vaultstore.Config) *vaultstore.Store {
	t.Helper()
	s, err := vaultstore.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestContract(t *testing.T) {
	srv := vaulttest.StartDev(t)
	runContract(t, "contract", vaultstore.Config{Client: srv.Client(t)})
}

// The contract holds as well where each record carries its own
// check-and-set requirement (a mount that does not require it).
func TestContractOnAMountWithoutCheckAndSet(t *testing.T) {
	srv := vaulttest.StartDev(t)
	if _, err := srv.RootClient(t).Logical().Write("secret/config", map[string]any{"cas_required": false}); err != nil {
		t.Fatal(err)
	}
	runContract(t, "contract", vaultstore.Config{Client: srv.Client(t)})
}

func TestStartupChecks(t *testing.T) {
	srv := vaulttest.StartDev(t)
	root := srv.RootClient(t)
	ctx := context.Background()
	if err := root.Sys().Mount("kv1", &vault.MountInput{Type: "kv", Options: map[string]string{"version": "1"}}); err != nil {
		t.Fatal(err)
	}
	// A token that may only read.
	if err := root.Sys().PutPolicy("read-only", `path "secret/data/rotavault/*" { capabilities = ["read"] }
path "secret/metadata/rotavault/*" { capabilities = ["read", "list"] }`); err != nil {
		t.Fatal(err)
	}
	tok, err := root.Auth().Token().Create(&vault.TokenCreateRequest{Policies: []string{"read-only"}})
	if err != nil {
		t.Fatal(err)
	}
	readOnly, err := root.Clone()
	if err != nil {
		t.Fatal(err)
	}
	readOnly.SetToken(tok.Auth.ClientToken)
	unreachable, err := root.Clone()
	if err != nil {
		t.Fatal(err)
	}
	if err := unreachable.SetAddress("http://127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name string
		cfg  vaultstore.Config
		want error
	}{
		{"unreachable", vaultstore.Config{Client: unreachable}, vaultstore.ErrUnreachable},
		{"missing mount", vaultstore.Config{Client: root, Mount: "nope"}, vaultstore.ErrMountMissing},
		{"kv version 1", vaultstore.Config{Client: root, Mount: "kv1"}, vaultstore.ErrNotKVv2},
		{"token lacks capabilities", vaultstore.Config{Client: readOnly}, vaultstore.ErrMissingPolicy},
		{"prefix escapes", vaultstore.Config{Client: root, Prefix: "rotavault/../other"}, store.ErrInvalidKey},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := vaultstore.New(ctx, c.cfg)
			if !errors.Is(err, c.want) {
				t.Fatalf("New = %v, want %v", err, c.want)
			}
			if strings.Contains(fmt.Sprint(err), srv.RootToken) {
				t.Fatal("the error contains the Vault token")
			}
		})
	}

	t.Run("sealed", func(t *testing.T) {
		if err := root.Sys().Seal(); err != nil {
			t.Fatal(err)
		}
		_, err := vaultstore.New(ctx, vaultstore.Config{Client: root})
		if !errors.Is(err, vaultstore.ErrSealed) {
			t.Fatalf("New = %v, want ErrSealed", err)
		}
	})
}

func TestRecordsAreCheckAndSetOnlyAndDeleteDestroys(t *testing.T) {
	srv := vaulttest.StartDev(t)
	root := srv.RootClient(t)
	ctx := context.Background()
	s, err := vaultstore.New(ctx, vaultstore.Config{Client: srv.Client(t), MaxVersions: 3})
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.Put(ctx, "families/acme", []byte("one"), 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if v, err = s.Put(ctx, "families/acme", []byte(fmt.Sprint(i)), v); err != nil {
			t.Fatal(err)
		}
	}
	meta, err := root.KVv2("secret").GetMetadata(ctx, "rotavault/families/acme")
	if err != nil {
		t.Fatal(err)
	}
	if !meta.CASRequired || meta.MaxVersions != 3 || len(meta.Versions) > 3 {
		t.Fatalf("metadata: cas_required=%v max_versions=%d versions kept=%d", meta.CASRequired, meta.MaxVersions, len(meta.Versions))
	}
	// Another writer that forgets check-and-set is refused by Vault itself.
	if _, err := root.KVv2("secret").Put(ctx, "rotavault/families/acme", map[string]any{"value": "eA=="}); err == nil {
		t.Fatal("Vault accepted a write without check-and-set")
	}
	if err := s.Delete(ctx, "families/acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := root.KVv2("secret").GetMetadata(ctx, "rotavault/families/acme"); err == nil {
		t.Fatal("metadata (and with it every version) survived Delete")
	}
	if _, err := root.KVv2("secret").GetVersion(ctx, "rotavault/families/acme", 1); err == nil {
		t.Fatal("an old version survived Delete")
	}
}
