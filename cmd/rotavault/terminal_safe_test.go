package main

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Text that came from a provider reaches people's terminals through the
// CLI's field lines, the credentials list and error messages: escape
// sequences must not run there, and newlines must not forge output lines.
func TestProviderTextCannotDriveTheTerminal(t *testing.T) {
	hostile := "Bearer\x1b[2J\x1b]0;owned\x07\r\nfake line\u202egnp.exe\u0085"
	var out bytes.Buffer
	f := newFields(&out)
	f.add("token type", hostile)
	f.addIf("instance url", hostile)
	if err := f.flush(); err != nil {
		t.Fatal(err)
	}
	texts := map[string]string{
		"fields":           out.String(),
		"credentials list": truncate(hostile, maxErrorCell),
		"error":            formatError(status.Error(codes.Unavailable, "provider: refresh: "+hostile)),
	}
	for name, text := range texts {
		if strings.ContainsAny(text, "\x1b\x07\r\u202e\u0085") {
			t.Errorf("%s: %q holds control characters", name, text)
		}
		if !strings.Contains(text, "Bearer?[2J") {
			t.Errorf("%s: %q, want the text kept with its control characters marked", name, text)
		}
	}
	if n := strings.Count(texts["fields"], "\n"); n != 2 {
		t.Errorf("fields: %d lines, want 2: %q", n, texts["fields"])
	}
}
