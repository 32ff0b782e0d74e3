//go:build !linux

package main

import "os"

// hardenProcess does nothing where prctl(PR_SET_DUMPABLE) does not exist.
func hardenProcess() error { return nil }

// forgetEnv removes a secret variable from the environment once read.
func forgetEnv(name string) { _ = os.Unsetenv(name) }
