// Package fsutil holds file-system helpers shared by Rotavault's on-disk
// stores.
package fsutil

import "os"

// SyncDir fsyncs directory dir, making the entries created or renamed in it
// durable: fsyncing a file does not persist the directory entry that makes a
// new file findable after a power loss.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
