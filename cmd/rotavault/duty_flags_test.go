package main

import (
	"strings"
	"testing"
)

func TestDutyLeasePeriodFlagBounds(t *testing.T) {
	dir := t.TempDir()
	keyFile, _ := newKeyFile(t, dir, "store.key")
	c := newCLI(t, nil)
	for _, d := range []string{"500ms", "-1s", "11m"} {
		r := c.run("", "serve", "--addr", "127.0.0.1:0", "--data-dir", dir, "--store-key-file", keyFile, "--"+dutyLeasePeriodFlag, d).expect(t, exitUsage)
		if !strings.Contains(r.stderr, "--"+dutyLeasePeriodFlag) {
			t.Errorf("serve --%s %s: %s", dutyLeasePeriodFlag, d, r.stderr)
		}
	}
}
