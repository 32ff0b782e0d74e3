// Package versionwait waits for a stored record to change: a replica
// waiting for another's refresh polls the family record's version, the
// store's only signal that shares nothing else between replicas.
package versionwait

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/store"
)

// Until reads key from st every poll until its version is no longer
// version (or the record is gone), or now() is no longer before deadline.
// Errors: *brokererr.UnavailableError (the store's, ErrNotFound
// excepted); ctx's, wrapped.
func Until(ctx context.Context, st store.Store, key string, version uint64, deadline time.Time, poll time.Duration, now func() time.Time) error {
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		rec, err := st.Get(ctx, key)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return brokererr.StoreUnavailable(err)
		}
		if err != nil || rec.Version != version || !now().Before(deadline) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("broker: waiting for another replica's refresh: %w", ctx.Err())
		case <-t.C:
		}
	}
}
