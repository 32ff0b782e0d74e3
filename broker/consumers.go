package broker

import "github.com/rotavault/rotavault/broker/catalog"

// The consumer catalog is package catalog (wired in New); the transport
// records and lists consumers there directly (server.ConsumerCatalog).

// Catalog returns the broker's consumer catalog.
func (b *Broker) Catalog() *catalog.Catalog { return b.catalog }
