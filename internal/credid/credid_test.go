package credid

import (
	"errors"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	for _, id := range []string{"a", "0", "acme", "acme-prod.eu_1", strings.Repeat("a", MaxLen)} {
		if err := Validate(id); err != nil {
			t.Errorf("Validate(%q) = %v, want nil", id, err)
		}
	}
	for _, id := range []string{"", strings.Repeat("a", MaxLen+1), "Acme", "-acme", ".acme", "_a", "a/b", "a\\b", "..", "a b", "a\x00", "acmé", "a:b"} {
		if err := Validate(id); !errors.Is(err, ErrInvalid) {
			t.Errorf("Validate(%q) = %v, want ErrInvalid", id, err)
		}
	}
}
