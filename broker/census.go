package broker

import (
	"context"
	"fmt"

	"github.com/rotavault/rotavault/broker/family"
)

// censusPage is how many credentials CountCredentials reads per page.
const censusPage = 1000

// CountCredentials counts the credentials by status, every Status present
// (0 where none has it), for the status RPC and the credentials gauge.
// It reads what ListCredentials reads: the store's keys a page at a time
// and each credential's cached view. Errors: ListCredentials's (the store
// unreachable).
func (b *Broker) CountCredentials(ctx context.Context) (map[family.Status]int, error) {
	counts := map[family.Status]int{family.StatusActive: 0, family.StatusRevoked: 0, family.StatusAwaitingReauth: 0, family.StatusUnproven: 0}
	after := ""
	for {
		page, more, err := b.ListCredentials(ctx, after, censusPage)
		if err != nil {
			return nil, fmt.Errorf("broker: count credentials: %w", err)
		}
		for _, c := range page {
			counts[c.Status]++
		}
		if !more || len(page) == 0 {
			return counts, nil
		}
		after = page[len(page)-1].ID
	}
}
