package registry

import (
	"context"
	"errors"
	"fmt"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/internal/jsonrec"
	"github.com/rotavault/rotavault/store"
)

// ReadCredential reads credential id's record from st, past any cache, with
// its version. Errors: brokererr.ErrNotFound, *brokererr.UnavailableError,
// a record this build cannot decode.
func ReadCredential(ctx context.Context, st store.Store, id string) (*family.Credential, uint64, error) {
	rec, err := st.Get(ctx, family.CredentialKey(id))
	if errors.Is(err, store.ErrNotFound) {
		return nil, 0, fmt.Errorf("%w: %s", brokererr.ErrNotFound, id)
	}
	if err != nil {
		return nil, 0, brokererr.StoreUnavailable(err)
	}
	var cred family.Credential
	if err := jsonrec.Decode(rec.Value, &cred, &cred.Format); err != nil {
		return nil, 0, err
	}
	return &cred, rec.Version, nil
}

// Incarnations answers the consumer catalog's question about credentials
// (catalog.Credentials) from the store.
type Incarnations struct{ Store store.Store }

// Incarnation is the stored credential id's incarnation. Errors:
// ReadCredential's.
func (i Incarnations) Incarnation(ctx context.Context, id string) (string, error) {
	cred, _, err := ReadCredential(ctx, i.Store, id)
	if err != nil {
		return "", err
	}
	return cred.Incarnation, nil
}
