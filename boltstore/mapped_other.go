//go:build !linux

package boltstore

// releaseMapped does nothing where madvise's MADV_DONTNEED on a shared
// file mapping is not known to keep the file's contents.
func releaseMapped(uintptr, int64) error { return nil }
