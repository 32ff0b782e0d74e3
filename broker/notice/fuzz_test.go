package notice

import (
	"errors"
	"testing"

	"github.com/rotavault/rotavault/broker/brokererr"
)

// FuzzCursorDecode checks what a watcher may send as a cursor: no panic;
// it decodes, or is refused with InvalidArgumentError or ErrCursorExpired;
// and every cursor the log hands out decodes to its own sequence number.
func FuzzCursorDecode(f *testing.F) {
	cursors, err := newCursorCodec(newCursorKey())
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{"", "c2", "not-a-cursor", cursors.encode(7), "MS4wMDExMjIzMzQ0NTU2Njc3LjM", "c2AAAAAAAAAAAAAAAAAAAAAA"} {
		f.Add(seed, uint64(len(seed)))
	}
	f.Fuzz(func(t *testing.T, cursor string, seq uint64) {
		if _, err := cursors.decode(cursor); err != nil {
			var inv *brokererr.InvalidArgumentError
			if !errors.As(err, &inv) && !errors.Is(err, ErrCursorExpired) {
				t.Fatalf("cursor error of the wrong kind: %v", err)
			}
		}
		if got, err := cursors.decode(cursors.encode(seq)); err != nil || got != seq {
			t.Fatalf("cursor of %d decodes to %d, %v", seq, got, err)
		}
	})
}
