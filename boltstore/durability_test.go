package boltstore

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rotavault/rotavault/store"
)

const (
	helperEnv     = "BOLTSTORE_TEST_HELPER"
	helperPathEnv = "BOLTSTORE_TEST_PATH"
	helperWriter  = "writer"
	// helperWrites bounds the child if nobody kills it.
	helperWrites     = 20000
	committedPrefix  = "committed "
	durableCounter   = "durable/counter"
	killAfterReports = 40
)

func durableKey(i uint64) string { return fmt.Sprintf("durable/r%06d", i) }

func durableValue(i uint64) string { return "value-" + strconv.FormatUint(i, 10) }

// TestHelperProcess is the child of TestKillNineDurability, not a test of
// its own: it writes with check-and-set and reports each write on stdout
// only after Put returned.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != helperWriter {
		t.Skip("child process of TestKillNineDurability")
	}
	s, err := Open(os.Getenv(helperPathEnv), testKey(t, 1), Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(2)
	}
	ctx := t.Context()
	for i := uint64(1); i <= helperWrites; i++ {
		if _, err := s.Put(ctx, durableCounter, []byte(durableValue(i)), i-1); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(2)
		}
		if _, err := s.Put(ctx, durableKey(i), []byte(durableValue(i)), 0); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(2)
		}
		// os.Stdout is unbuffered: the line leaves with this call.
		fmt.Printf("%s%d\n", committedPrefix, i)
	}
	os.Exit(0)
}

// TestKillNineDurability kills a writing process with SIGKILL and checks
// that every write it had reported as committed is in the file.
func TestKillNineDurability(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("needs SIGKILL")
	}
	path := filepath.Join(t.TempDir(), "rotavault.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+helperWriter, helperPathEnv+"="+path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	// The reader ends when the child's stdout closes, which its death
	// guarantees; the test kills the child on every path below.
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var reported []uint64
	collect := func(line string) {
		if n, ok := strings.CutPrefix(line, committedPrefix); ok {
			i, err := strconv.ParseUint(n, 10, 64)
			if err != nil {
				t.Errorf("child printed %q", line)
				return
			}
			reported = append(reported, i)
		}
	}

	deadline := time.After(20 * time.Second)
wait:
	for len(reported) < killAfterReports {
		select {
		case line, ok := <-lines:
			if !ok {
				break wait
			}
			collect(line)
		case <-deadline:
			break wait
		}
	}
	killErr := cmd.Process.Signal(syscall.SIGKILL)
	for line := range lines { // lines already written were committed too
		collect(line)
	}
	waitErr := cmd.Wait()
	if killErr != nil || len(reported) < killAfterReports {
		t.Fatalf("child reported %d writes before the kill (kill: %v, wait: %v); stderr:\n%s", len(reported), killErr, waitErr, stderr.String())
	}
	var exitErr *exec.ExitError
	if !errors.As(waitErr, &exitErr) || exitErr.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child was not killed mid-run (wait: %v), so the test proved nothing; stderr:\n%s", waitErr, stderr.String())
	}

	s := openStore(t, path, testKey(t, 1), Options{})
	defer closeStore(t, s)
	last := reported[len(reported)-1]
	rec, err := s.Get(t.Context(), durableCounter)
	if err != nil {
		t.Fatalf("counter after the kill: %v", err)
	}
	// The child may have committed one more write than it managed to print.
	if rec.Version < last || rec.Version > last+1 || string(rec.Value) != durableValue(rec.Version) {
		t.Fatalf("counter after the kill = (%q, version %d), last reported version %d", rec.Value, rec.Version, last)
	}
	for i, n := range reported {
		if n != uint64(i)+1 {
			t.Fatalf("child reported %d as write #%d", n, i+1)
		}
		wantGet(t, s, durableKey(n), durableValue(n), 1)
	}
	// The store goes on working from where the child stopped.
	if _, err := s.Put(t.Context(), durableCounter, []byte(durableValue(rec.Version+1)), rec.Version); err != nil {
		t.Fatalf("write after recovery: %v", err)
	}
	if _, err := s.Put(t.Context(), durableCounter, []byte("stale"), last-1); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale write after recovery: err = %v, want ErrConflict", err)
	}
}
