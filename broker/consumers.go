package broker

import (
	"context"

	"github.com/rotavault/rotavault/broker/catalog"
)

// The consumer catalog is package catalog; the broker answers its question
// (does a credential exist, in which incarnation). The transport records
// and lists consumers there directly (server.ConsumerCatalog).

// Catalog returns the broker's consumer catalog.
func (b *Broker) Catalog() *catalog.Catalog { return b.catalog }

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
