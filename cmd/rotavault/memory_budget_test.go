package main

import "testing"

// idleLiveHeapBudget bounds the live heap an idle credential may cost a
// node. Measured: about 1.7 KB (its records as decoded, its entry, its
// place in the schedule); the bound leaves room for noise, not for
// another copy of a record.
const idleLiveHeapBudget = 2560

// A node over 5,000 idle credentials (seeded as the memory benchmark
// seeds them) holds at most idleLiveHeapBudget of live heap for each,
// and, once its store has released its mapped pages, not the store file
// its start read: file-backed resident memory grows by less than a
// quarter of the file. Byte counts, not timing: the garbage collector
// runs before each sample.
func TestIdleCredentialsStayWithinTheMemoryBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("seeds and loads 5,000 credentials")
	}
	const n = 5000
	r := runMemoryScenario(t, n, 0, 0)
	perCredential := (r.loaded.live - r.empty.live) / n
	fileGrowth := r.loaded.file - r.empty.file
	t.Logf("%d idle credentials: %d B of live heap each; store file %d KiB, file-backed resident memory +%d KiB (+%d KiB before the release)",
		n, perCredential, r.fileSize>>10, fileGrowth>>10, (r.loadedUnreleased.file-r.emptyUnreleased.file)>>10)
	if perCredential > idleLiveHeapBudget {
		t.Errorf("an idle credential holds %d B of live heap, more than the budget of %d B", perCredential, idleLiveHeapBudget)
	}
	if fileGrowth > r.fileSize/4 {
		t.Errorf("the store file's pages stay resident: +%d KiB for a %d KiB file", fileGrowth>>10, r.fileSize>>10)
	}
}
