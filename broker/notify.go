package broker

import (
	"context"
	"errors"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/notice"
)

// The notice log and its cursors are package notice; the rotation core
// publishes to it and follows what other replicas publish.

// Subscribe starts a subscription for the given credentials (all when
// empty), resuming after cursor when it is set. Errors:
// *InvalidArgumentError, ErrCursorExpired, ErrTooManyReplays,
// *UnavailableError, ErrClosed.
func (b *Broker) Subscribe(ctx context.Context, credentialIDs []string, cursor string) (*notice.Subscription, error) {
	filter, err := notice.Filter(credentialIDs)
	if err != nil {
		return nil, err
	}
	if b.life.Closed() {
		return nil, brokererr.ErrClosed
	}
	return b.notices.Subscribe(ctx, filter, cursor)
}

// notify starts recording a notice and delivering it (see
// notice.Log.Start); the caller must call wait.
func (b *Broker) notify(ctx context.Context, n notice.Notice) (wait func()) {
	if n.Kind == notice.FamilyRevoked {
		b.metrics.CountRevocation(n.Reason)
	}
	return b.notices.Start(ctx, n)
}

// applyRemoteNotice brings this replica's cached state of a credential up to
// date after another replica changed its family: without it, this replica
// would keep handing out a cached access token of a family revoked
// elsewhere until the token expired.
func (b *Broker) applyRemoteNotice(ctx context.Context, n notice.Notice) {
	b.creds.Remote(ctx, n) // a creation or deletion: the store's listing
	b.entriesMu.RLock()
	e, ok := b.entries[n.CredentialID]
	b.entriesMu.RUnlock()
	if !ok {
		return // loaded from the store on first use
	}
	v, err := b.readView(ctx, n.CredentialID)
	switch {
	case errors.Is(err, brokererr.ErrNotFound):
		b.dropEntry(n.CredentialID)
	case err != nil:
		// Stop handing out a token the notice may have killed; the next
		// caller refreshes from the store's state.
		if n.Kind == notice.FamilyRevoked || n.Kind == notice.AccessRotated {
			e.dropAccess()
		}
		b.log.WarnContext(ctx, "could not re-read a credential another replica changed", "credential", n.CredentialID, "err", err)
	default:
		e.setView(v)
	}
}

// SubscriberCount is the number of live subscriptions on this process.
func (b *Broker) SubscriberCount() int {
	return b.notices.SubscriberCount()
}
