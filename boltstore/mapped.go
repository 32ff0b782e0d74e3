package boltstore

import (
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// defaultReleaseMappedEvery is how often an open store hands its mapped
// pages back (Options.ReleaseMappedEvery).
const defaultReleaseMappedEvery = time.Minute

// ReleaseMappedPages tells the kernel that this process no longer needs the
// pages of the store file it has mapped. bbolt reads every record through a
// read-only shared mapping of the file, so each page a read has touched
// counts in the process's resident memory for as long as the process runs:
// a server that loaded 100,000 credentials at start keeps the whole file
// resident although it serves them from its own memory. Released pages
// stay in the kernel's page cache (the next read of one maps it again
// without reading the disk), which the kernel reclaims under pressure. No
// data can be lost: writes go to the file, never through the mapping.
//
// Safe for concurrent use with every other method but Close. On systems
// other than Linux it does nothing.
func (s *Store) ReleaseMappedPages() error {
	// Inside a read transaction bbolt cannot remap the file (growing it
	// waits for every reader), so the range stays the mapping's.
	err := s.db.View(func(tx *bolt.Tx) error {
		return releaseMapped(s.db.Info().Data, tx.Size())
	})
	if err != nil {
		return fmt.Errorf("boltstore: release mapped pages of %s: %w", s.path, err)
	}
	return nil
}

// releaseMappedLoop calls ReleaseMappedPages every period until stop is
// closed; Close waits for it through done.
func (s *Store) releaseMappedLoop(period time.Duration, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if err := s.ReleaseMappedPages(); err != nil {
				s.log.Warn("boltstore: could not release mapped pages", "err", err)
			}
		}
	}
}
