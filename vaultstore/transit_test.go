package vaultstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	vault "github.com/hashicorp/vault/api"

	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/vaultstore"
)

func TestTransitContract(t *testing.T) {
	srv := vaulttest.StartDev(t)
	runContract(t, "transit", vaultstore.Config{Client: srv.TransitClient(t), TransitKey: vaulttest.TransitKey})
}

func TestTransitHidesValuesFromKVReaders(t *testing.T) {
	srv := vaulttest.StartDev(t)
	root := srv.RootClient(t)
	ctx := context.Background()
	s := newStore(t, vaultstore.Config{Client: srv.TransitClient(t), TransitKey: vaulttest.TransitKey})
	const secret = "5Aep861-refresh-token-in-clear"
	if _, err := s.Put(ctx, "families/acme", []byte(secret), 0); err != nil {
		t.Fatal(err)
	}
	// What an operator with read access to the KV path sees.
	raw, err := root.KVv2("secret").Get(ctx, "rotavault/families/acme")
	if err != nil {
		t.Fatal(err)
	}
	if dump := fmt.Sprint(raw.Data); strings.Contains(dump, secret) || strings.Contains(dump, "NUFlcDg2MS1") {
		t.Fatalf("the KV record reveals the value: %s", dump)
	}
	// A sealed value copied to another record does not open there.
	if _, err := root.KVv2("secret").Put(ctx, "rotavault/families/other", raw.Data, vault.WithCheckAndSet(0)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "families/other"); !errors.Is(err, vaultstore.ErrUndecryptable) {
		t.Fatalf("moved ciphertext: %v, want ErrUndecryptable", err)
	}
	// A second process (another data key) reads it, through Transit.
	s2 := newStore(t, vaultstore.Config{Client: srv.TransitClient(t), TransitKey: vaulttest.TransitKey})
	if rec, err := s2.Get(ctx, "families/acme"); err != nil || string(rec.Value) != secret {
		t.Fatalf("another replica reads %q, %v", rec.Value, err)
	}
	// Without the Transit key the record is refused, not misread.
	s3 := newStore(t, vaultstore.Config{Client: srv.Client(t)})
	if _, err := s3.Get(ctx, "families/acme"); !errors.Is(err, vaultstore.ErrUndecryptable) {
		t.Fatalf("no transit key: %v", err)
	}
	// A missing Transit key fails at start-up.
	if _, err := vaultstore.New(ctx, vaultstore.Config{Client: root, TransitKey: "nope"}); err == nil {
		t.Fatal("a missing Transit key was accepted")
	}
}
