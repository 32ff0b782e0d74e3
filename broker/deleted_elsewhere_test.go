package broker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/store/memstore"
)

// A credential without an active family, deleted on one replica, is gone
// on another that had loaded it: GetCredential there answers NOT_FOUND, as
// does GetAccessToken after it, not the deleted credential. (With an
// active family the deletion's notice tells the others; without one there
// is none.) A credential changed elsewhere is described as changed.
func TestCredentialDeletedOnAnotherReplicaIsGoneHere(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	a := newTestBroker(t, st, option.WithSchedulerInterval(time.Hour))
	b := newTestBroker(t, st, option.WithSchedulerInterval(time.Hour))
	spec := credspec.Spec{ProviderKind: credspec.ProviderOAuth2, TokenURL: "https://provider.test/token", ClientID: "c", Scopes: []string{"api"}}
	for _, id := range []string{"gone", "changed"} {
		if _, err := a.Credentials().Create(ctx, id, spec); err != nil {
			t.Fatal(err)
		}
		if c, err := b.Credentials().Get(ctx, id); err != nil || c.Status != family.StatusAwaitingReauth {
			t.Fatalf("replica b loads %s: %+v, %v", id, c, err)
		}
	}
	if err := a.Credentials().Delete(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if c, err := b.Credentials().Get(ctx, "gone"); !errors.Is(err, brokererr.ErrNotFound) {
		t.Fatalf("replica b describes a credential replica a deleted: %+v, %v; want ErrNotFound", c, err)
	}
	if _, err := b.GetAccessToken(ctx, access.Request{CredentialID: "gone"}); !errors.Is(err, brokererr.ErrNotFound) {
		t.Fatalf("GetAccessToken on replica b after the deletion: %v, want ErrNotFound", err)
	}

	changed := spec
	changed.Scopes = []string{"api", "refresh_token"}
	if _, err := a.Credentials().Update(ctx, "changed", []credspec.Field{credspec.FieldScopes}, changed); err != nil {
		t.Fatal(err)
	}
	if c, err := b.Credentials().Get(ctx, "changed"); err != nil || len(c.Spec.Scopes) != 2 {
		t.Fatalf("replica b describes %+v (%v), want the scopes replica a set", c.Spec.Scopes, err)
	}
}
