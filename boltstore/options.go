package boltstore

import (
	"log/slog"
	"time"
)

// defaultOpenTimeout bounds the wait for the file lock: long enough to ride
// out a restarting server's exit, short enough that a second server started
// by mistake fails at once.
const defaultOpenTimeout = 2 * time.Second

// Options are the optional settings of Open. The zero value is valid.
type Options struct {
	// PreviousKeys open records sealed under earlier keys; new records are
	// always sealed under the key given to Open. Keep an old key here until
	// RotateKey has moved every record off it.
	PreviousKeys []Key
	// Logger receives operational events (never values or key material).
	// Nil discards them.
	Logger *slog.Logger
	// OpenTimeout is how long Open waits for another holder of the file
	// lock to let go before failing with ErrLocked. Zero or less means 2s.
	OpenTimeout time.Duration
	// ReleaseMappedEvery is how often the store hands back the pages of
	// its file that reads have mapped (ReleaseMappedPages): they would
	// otherwise stay in the process's resident memory, a whole file's
	// worth after the server's start has read every record. Zero means
	// every minute; less than zero never.
	ReleaseMappedEvery time.Duration
}
