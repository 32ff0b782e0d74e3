package vaultstore_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/syncbuf"
	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/vaultstore"
)

// createCost creates a record and returns the Vault writes it took and the
// record's own metadata settings.
func createCost(t *testing.T, s *vaultstore.Store, counter *vaulttest.Requests, root *vault.Client, key string) (writes int64, keyCAS bool) {
	t.Helper()
	ctx := t.Context()
	before := counter.KVWrites()
	if _, err := s.Put(ctx, key, []byte("v1"), 0); err != nil {
		t.Fatal(err)
	}
	writes = counter.KVWrites() - before
	meta, err := root.KVv2("secret").GetMetadata(ctx, "rotavault/"+key)
	if err != nil {
		t.Fatal(err)
	}
	return writes, meta.CASRequired
}

// versionsKeptAfter writes key (created already) n more times and returns
// how many of its versions Vault keeps.
func versionsKeptAfter(t *testing.T, s *vaultstore.Store, root *vault.Client, key string, n int) int {
	t.Helper()
	ctx := t.Context()
	v := uint64(1)
	for i := range n {
		var err error
		if v, err = s.Put(ctx, key, []byte(fmt.Sprint(i)), v); err != nil {
			t.Fatal(err)
		}
	}
	meta, err := root.KVv2("secret").GetMetadata(ctx, "rotavault/"+key)
	if err != nil {
		t.Fatal(err)
	}
	return len(meta.Versions)
}

// A mount that requires check-and-set and bounds versions for every key
// (as vaulttest provisions secret/ and README recommends) makes a record's
// own metadata unnecessary: its creation is one Vault write, and Vault still
// refuses a write without check-and-set to it and keeps at most 10 versions.
// Loosened later, the mount's settings are read again within a minute and
// new records get metadata of their own again.
func TestNewRecordIsOneVaultWriteOnAMountThatRequiresCheckAndSet(t *testing.T) {
	srv := vaulttest.StartDev(t)
	root := srv.RootClient(t)
	ctx := t.Context()
	client, counter := srv.CountingClient(t)
	clock := fakeclock.New(time.Now())
	var logs syncbuf.Buffer
	s := newStore(t, vaultstore.Config{Client: client, Now: clock.Now, Logger: slog.New(slog.NewTextHandler(&logs, nil))})

	writes, keyCAS := createCost(t, s, counter, root, "families/one")
	if writes != 1 || keyCAS {
		t.Fatalf("creation on a mount requiring check-and-set: %d Vault writes (key's own cas_required %v), want 1 and no metadata", writes, keyCAS)
	}
	if _, err := root.KVv2("secret").Put(ctx, "rotavault/families/one", map[string]any{"value": "eA=="}); err == nil {
		t.Fatal("Vault accepted a write without check-and-set")
	}
	if kept := versionsKeptAfter(t, s, root, "families/one", 12); kept > vaultstore.DefaultMaxVersions {
		t.Fatalf("%d versions kept, want at most %d", kept, vaultstore.DefaultMaxVersions)
	}

	// The operator loosens the mount: within a minute new records carry
	// the settings themselves.
	if _, err := root.Logical().Write("secret/config", map[string]any{"cas_required": false}); err != nil {
		t.Fatal(err)
	}
	clock.Add(time.Minute)
	writes, keyCAS = createCost(t, s, counter, root, "families/two")
	if writes != 2 || !keyCAS {
		t.Fatalf("creation once the mount no longer requires check-and-set: %d Vault writes (key's cas_required %v), want 2 with cas_required", writes, keyCAS)
	}
	if !strings.Contains(logs.String(), "no longer requires check-and-set") {
		t.Fatalf("the change was not logged:\n%s", logs.String())
	}
	// A store started on such a mount does the same from its first record.
	s2 := newStore(t, vaultstore.Config{Client: client})
	if writes, keyCAS := createCost(t, s2, counter, root, "families/three"); writes != 2 || !keyCAS {
		t.Fatalf("creation by a store started on a mount without check-and-set: %d writes, cas_required %v; want 2, true", writes, keyCAS)
	}
}

// A store whose max versions is below Vault's default keeps writing each
// record's own bound on a mount that sets none (Vault keeps the larger of
// the key's and the mount's, 10 when both are unset), and says so when the
// mount's own bound is larger, which a key's cannot lower.
func TestNewRecordKeepsItsOwnBoundBelowVaultsDefault(t *testing.T) {
	srv := vaulttest.StartDev(t)
	root := srv.RootClient(t)
	client, counter := srv.CountingClient(t)
	s := newStore(t, vaultstore.Config{Client: client, MaxVersions: 3})
	writes, keyCAS := createCost(t, s, counter, root, "families/acme")
	if writes != 2 || !keyCAS {
		t.Fatalf("creation with MaxVersions 3 on a mount without a bound: %d writes, cas_required %v; want 2, true", writes, keyCAS)
	}
	if kept := versionsKeptAfter(t, s, root, "families/acme", 5); kept > 3 {
		t.Fatalf("%d versions kept, want at most 3", kept)
	}

	if _, err := root.Logical().Write("secret/config", map[string]any{"max_versions": 20}); err != nil {
		t.Fatal(err)
	}
	var logs syncbuf.Buffer
	newStore(t, vaultstore.Config{Client: client, MaxVersions: 3, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if !strings.Contains(logs.String(), "keeps more versions of every record than the store's max versions") {
		t.Fatalf("a mount bound above the store's was not reported:\n%s", logs.String())
	}
}

// A mount that deletes versions after a time would lose the record of a
// credential not rotated for that long: start-up refuses it, saying how to
// fix it.
func TestStartupRefusesAMountThatDeletesVersions(t *testing.T) {
	srv := vaulttest.StartDev(t)
	root := srv.RootClient(t)
	if _, err := root.Logical().Write("secret/config", map[string]any{"delete_version_after": "720h"}); err != nil {
		t.Fatal(err)
	}
	_, err := vaultstore.New(context.Background(), vaultstore.Config{Client: srv.Client(t)})
	if !errors.Is(err, vaultstore.ErrMountDeletesVersions) || !strings.Contains(err.Error(), "delete_version_after=0s") {
		t.Fatalf("New = %v, want ErrMountDeletesVersions with the fix", err)
	}
}
