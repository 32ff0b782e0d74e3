package boltstore

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/storetest"
)

// rssFile is the process's resident memory backed by files (mapped ones
// included), from /proc/self/status.
func rssFile(t *testing.T) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc/self/status: %v", err)
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "RssFile:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("RssFile: %q", v)
			}
			return kb << 10
		}
	}
	t.Skip("no RssFile in /proc/self/status")
	return 0
}

// Reading every record maps the whole file into the process's resident
// memory; ReleaseMappedPages hands it back, and every record still reads
// back as written.
func TestReleasedMappedPagesLeaveResidentMemoryAndKeepRecords(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("releases pages on Linux only")
	}
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "store.db")
	st := openStore(t, path, testKey(t, 1), Options{ReleaseMappedEvery: -1})
	const n, size = 4000, 4000 // a file of about 16 MB and more
	value := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, size) }
	err := storetest.Seed(ctx, st, n, func(i int) ([]store.Record, error) {
		return []store.Record{{Key: fmt.Sprintf("r/%05d", i), Value: value(i)}}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	readAll := func() {
		t.Helper()
		for i := range n {
			rec, err := st.Get(ctx, fmt.Sprintf("r/%05d", i))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(rec.Value, value(i)) {
				t.Fatalf("record %d changed", i)
			}
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	readAll()
	before := rssFile(t)
	if err := st.ReleaseMappedPages(); err != nil {
		t.Fatal(err)
	}
	after := rssFile(t)
	t.Logf("file %d MiB; file-backed resident memory %d MiB after reading every record, %d MiB after the release",
		fi.Size()>>20, before>>20, after>>20)
	if dropped := before - after; dropped < fi.Size()/2 {
		t.Errorf("the release gave back %d KiB of a %d KiB file that was read whole", dropped>>10, fi.Size()>>10)
	}
	readAll()
}
