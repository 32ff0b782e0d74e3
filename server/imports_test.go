package server

import (
	"go/build"
	"strings"
	"testing"
)

// TestTransportSpeaksOnlyTheBrokersTypes keeps the transport from reaching
// past the rotation logic: server converts between the wire and the
// broker's types, and never imports the OAuth client or a store (whose
// types would then leak onto the wire, and whose changes would ripple into
// the transport).
func TestTransportSpeaksOnlyTheBrokersTypes(t *testing.T) {
	const module = "github.com/rotavault/rotavault/"
	allowed := []string{"audit", "broker", "broker/", "gen/", "internal/"}
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		rest, ours := strings.CutPrefix(imp, module)
		if !ours {
			continue
		}
		ok := false
		for _, a := range allowed {
			if rest == a || strings.HasSuffix(a, "/") && strings.HasPrefix(rest, a) {
				ok = true
			}
		}
		if !ok {
			t.Errorf("server imports %s; it may import only %v of this module", imp, allowed)
		}
	}
}
