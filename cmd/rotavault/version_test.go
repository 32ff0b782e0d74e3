package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/rotavault/rotavault/internal/version"
)

// TestVersion: `rotavault version` and `rotavault --version` print the
// build's description without a server, and --json the same as an object.
func TestVersion(t *testing.T) {
	c := newCLI(t, nil)
	want := version.Get()
	for _, argv := range [][]string{{"version"}, {"--version"}} {
		r := c.run("", argv...).expect(t, exitOK)
		if got := strings.TrimSpace(r.stdout); got != want.String() || !strings.HasPrefix(got, "rotavault "+want.Version) {
			t.Fatalf("%v printed %q, want %q", argv, got, want.String())
		}
	}
	var got version.Info
	r := c.run("", "version", "--json").expect(t, exitOK)
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || got != want {
		t.Fatalf("version --json = %q (%v), want %+v", r.stdout, err, want)
	}
	c.run("", "version", "extra").expect(t, exitUsage)
}
