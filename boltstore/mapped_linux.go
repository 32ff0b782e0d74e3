package boltstore

import "syscall"

// releaseMapped drops the process's mapping of [addr, addr+size): its
// pages leave the resident set and stay in the page cache.
func releaseMapped(addr uintptr, size int64) error {
	if size <= 0 {
		return nil
	}
	if _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, addr, uintptr(size), syscall.MADV_DONTNEED); errno != 0 {
		return errno
	}
	return nil
}
