package boltstore

import "errors"

// Errors of this package, wrapped with %w; check them with errors.Is.
// Store methods also return the store package's ErrNotFound, ErrConflict and
// ErrInvalidKey.
var (
	// ErrUnknownKey: data in the file is sealed under a key that is neither
	// the given key nor one of Options.PreviousKeys.
	ErrUnknownKey = errors.New("boltstore: sealed under an unknown key")
	// ErrLocked: another process (or another Store in this process) has the
	// file open.
	ErrLocked = errors.New("boltstore: store file is locked")
	// ErrCorrupt: a record or the file does not decode, or a record fails
	// authentication (tampered with, moved to another key or version).
	ErrCorrupt = errors.New("boltstore: corrupt data")
	// ErrClosed: the Store was used after Close.
	ErrClosed = errors.New("boltstore: store is closed")
	// ErrUnsupportedFormat: the file or a record was written by a newer
	// Rotavault whose format this binary does not know.
	ErrUnsupportedFormat = errors.New("boltstore: unsupported format version")
)
