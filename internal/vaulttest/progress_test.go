package vaulttest

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestBuildProgressIsNotBuffered runs each progress filter of scripts/vault
// (the awk programs that count modules and packages) with its input still
// open, as during the 10–20 minute build: its progress line must arrive
// then, not when the build ends. awk buffers output to a pipe unless the
// program flushes.
func TestBuildProgressIsNotBuffered(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "scripts", "vault"))
	if err != nil {
		t.Fatal(err)
	}
	programs := regexp.MustCompile(`awk '(\S[^']*printf "scripts/vault: [^']*)'`).FindAllStringSubmatch(string(raw), -1)
	if len(programs) != 2 {
		t.Fatalf("found %d progress filters in scripts/vault, want 2 (modules, packages)", len(programs))
	}
	for i, m := range programs {
		program := m[1]
		t.Run([]string{"modules", "packages"}[i], func(t *testing.T) {
			cmd := exec.Command("awk", program)
			in, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() {
				_ = in.Close()
				_ = cmd.Wait()
			}()
			// Enough lines for a few progress lines of either filter (the
			// module filter counts "# get" lines), and for awk's input
			// buffer, which it fills before it reads on; far fewer bytes
			// of progress than an output buffer holds.
			for i := range 1000 {
				if _, err := fmt.Fprintf(in, "# get https://example/%d\n", i); err != nil {
					t.Fatal(err)
				}
			}
			line := make(chan string, 1)
			go func() {
				s, _ := bufio.NewReader(out).ReadString('\n')
				line <- s
				_, _ = io.Copy(io.Discard, out)
			}()
			select {
			case s := <-line:
				if !strings.HasPrefix(s, "scripts/vault: ") {
					t.Errorf("progress line %q", s)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no progress line while the input is still open: the output is buffered")
			}
		})
	}
}
