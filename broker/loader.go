package broker

import (
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/internal/bgload"
)

// newLoader loads the stored credentials in the background, 32 store reads
// at a time, while the replica serves; a call asking for one first loads it
// (entry). A reuse grace this server's claim cannot fit used to stop the
// start; now that credential alone is refused (RefuseShortGrace).
func (b *Broker) newLoader() *bgload.Loader[*entry] {
	return bgload.New(bgload.Config[*entry]{Store: b.store, Prefix: family.CredentialsPrefix, Workers: 32, RetryBase: b.opts.Refresh.RetryBase, Logger: b.log,
		Context: b.ctx, Items: b.entries, ItemsMu: &b.entriesMu, Load: b.load,
		Check: func(e *entry) error { return b.opts.RefuseShortGrace(e.view.Load().cred.Spec) },
	})
}
