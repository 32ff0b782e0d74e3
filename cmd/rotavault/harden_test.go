//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const hardenChildEnv = "ROTAVAULT_TEST_HARDEN_CHILD"

// A serve given its store key in ROTAVAULT_SERVER_STORE_KEY keeps it out of its
// environment once read — os.Getenv and /proc/PID/environ alike — and is
// not dumpable (no core file, no /proc/PID/mem or ptrace for other
// processes of the user). The server runs in a child process started with
// the key in its environment at exec, as a real deployment is; the child
// reports what it sees of itself.
func TestServeForgetsTheStoreKeyAndIsNotDumpable(t *testing.T) {
	if os.Getenv(hardenChildEnv) == "1" {
		hardenChild()
		return
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	key := base64.StdEncoding.EncodeToString(raw)
	cmd := exec.Command(os.Args[0], "-test.run=^TestServeForgetsTheStoreKeyAndIsNotDumpable$")
	cmd.Env = append(os.Environ(), hardenChildEnv+"=1", envStoreKey+"="+key, "ROTAVAULT_SERVER_DATA_DIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if bytes.Contains(out, []byte(key)) {
		t.Fatal("the child printed the key")
	}
	for _, want := range []string{"getenv-empty=true", "environ-has-key=false", "dumpable=0"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("child reports %q; want %s", strings.TrimSpace(string(out)), want)
		}
	}
}

// hardenChild runs serve until it has read its key, then prints what it
// finds of the key in its own environment, and whether it is dumpable.
func hardenChild() {
	keyPrefix := envStoreKey + "="
	original, _ := os.ReadFile("/proc/self/environ")
	value := ""
	for entry := range bytes.SplitSeq(original, []byte{0}) {
		if v, ok := bytes.CutPrefix(entry, []byte(keyPrefix)); ok {
			value = string(v)
		}
	}
	if value == "" {
		fmt.Println("no key in /proc/self/environ at start")
		os.Exit(1)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- execute(ctx, newRootCmd(strings.NewReader(""), io.Discard, os.Stdout, os.Getenv), []string{"serve", "--addr", "127.0.0.1:0", "--log-level", "error"}, os.Stdout)
	}()
	deadline := time.Now().Add(20 * time.Second)
	// serve unsets the variable, then zeroes the environment block's copy:
	// wait for both (or the deadline), not only the first.
	var environ []byte
	for {
		environ, _ = os.ReadFile("/proc/self/environ")
		scrubbed := os.Getenv(envStoreKey) == "" && !bytes.Contains(environ, []byte(value))
		if scrubbed || !time.Now().Before(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond) // a child process has no poll helper of its test
	}
	dumpable, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	if err != nil {
		dumpable = -1
	}
	fmt.Printf("getenv-empty=%v environ-has-key=%v dumpable=%d\n", os.Getenv(envStoreKey) == "", bytes.Contains(environ, []byte(value)), dumpable)
	cancel()
	<-done // cut off during start-up or serving: either way it stops
	os.Exit(0)
}
