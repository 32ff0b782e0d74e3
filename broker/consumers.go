package broker

import (
	"context"

	"github.com/rotavault/rotavault/broker/catalog"
)

// The consumer catalog is package catalog; the broker answers its question
// (does a credential exist, in which incarnation).

// RecordConsumers merges uses into the consumer catalog and returns those
// it could not store, for the caller to retry; see catalog.Catalog.Record.
func (b *Broker) RecordConsumers(ctx context.Context, uses []catalog.Use) ([]catalog.Use, error) {
	return b.catalog.Record(ctx, uses)
}

// ListConsumers lists up to limit catalog entries after the cursor and
// reports whether more follow; see catalog.Catalog.List.
func (b *Broker) ListConsumers(ctx context.Context, credentialID string, after catalog.Cursor, limit int) ([]catalog.Consumer, bool, error) {
	return b.catalog.List(ctx, credentialID, after, limit)
}

// catalogCredentials answers the catalog's question about credentials.
type catalogCredentials struct{ b *Broker }

var _ catalog.Credentials = catalogCredentials{}

func (c catalogCredentials) Incarnation(ctx context.Context, id string) (string, error) {
	cred, _, err := c.b.readCredential(ctx, id)
	if err != nil {
		return "", err
	}
	return cred.Incarnation, nil
}
