package memstore_test

import (
	"testing"

	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/memstore"
	"github.com/rotavault/rotavault/store/storetest"
)

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return memstore.New() })
}
