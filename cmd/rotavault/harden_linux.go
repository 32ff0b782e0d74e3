package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// hardenProcess makes the server non-dumpable: no core dump holding the
// store key and tokens, and /proc/PID/{environ,mem,maps} and ptrace closed
// to other processes of the same user (only root may still look).
func hardenProcess() error {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_DUMPABLE, 0): %w", err)
	}
	return nil
}

// forgetEnv removes a secret variable from the environment once read:
// os.Unsetenv hides it from this process and its children, and its value in
// the environment block the kernel set up at exec — what /proc/PID/environ
// shows, and which the Go runtime copied rather than referenced, so that
// os.Unsetenv leaves it there — is overwritten with zeros through
// /proc/self/mem. Best effort: without /proc only the unset happens.
func forgetEnv(name string) {
	_ = os.Unsetenv(name)
	start, end, err := environBlock()
	if err != nil {
		return
	}
	mem, err := os.OpenFile("/proc/self/mem", os.O_RDWR, 0)
	if err != nil {
		return
	}
	defer mem.Close()
	block := make([]byte, end-start)
	if _, err := mem.ReadAt(block, int64(start)); err != nil {
		return
	}
	prefix := []byte(name + "=")
	off := 0
	for entry := range bytes.SplitSeq(block, []byte{0}) {
		if bytes.HasPrefix(entry, prefix) {
			at := int64(start) + int64(off+len(prefix))
			_, _ = mem.WriteAt(make([]byte, len(entry)-len(prefix)), at)
		}
		off += len(entry) + 1
	}
}

// environBlock is [env_start, env_end) from /proc/self/stat (fields 50 and
// 51, counted from 1; the command name, field 2, may contain spaces and is
// skipped by its closing parenthesis).
func environBlock() (start, end uintptr, err error) {
	data, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0, 0, err
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/self/stat: no command name")
	}
	sc := bufio.NewScanner(bytes.NewReader(data[i+1:]))
	sc.Split(bufio.ScanWords)
	var fields []string
	for sc.Scan() {
		fields = append(fields, sc.Text())
	}
	// fields[0] is field 3.
	const envStart, envEnd = 50 - 3, 51 - 3
	if len(fields) <= envEnd {
		return 0, 0, fmt.Errorf("/proc/self/stat: %d fields, no env_start/env_end", len(fields)+2)
	}
	s, err1 := strconv.ParseUint(strings.TrimSpace(fields[envStart]), 10, 64)
	e, err2 := strconv.ParseUint(strings.TrimSpace(fields[envEnd]), 10, 64)
	if err1 != nil || err2 != nil || e <= s {
		return 0, 0, fmt.Errorf("/proc/self/stat: bad env_start/env_end")
	}
	return uintptr(s), uintptr(e), nil
}
