// Package credid holds the one grammar for credential ids, enforced by every
// layer that accepts one: the API, the rotation logic and the stores' keys.
package credid

import (
	"errors"
	"fmt"
)

// MaxLen is the longest credential id.
const MaxLen = 128

// ErrInvalid reports an id outside the grammar.
var ErrInvalid = errors.New("invalid credential id")

// Validate reports whether id matches [a-z0-9][a-z0-9._-]{0,127}. The grammar
// is a subset of every store's key grammar, so an id can never escape a
// backend's prefix.
func Validate(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty", ErrInvalid)
	}
	if len(id) > MaxLen {
		return fmt.Errorf("%w: longer than %d bytes", ErrInvalid, MaxLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		lowerOrDigit := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if i == 0 && !lowerOrDigit {
			return fmt.Errorf("%w: must start with a lowercase letter or digit", ErrInvalid)
		}
		if !lowerOrDigit && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("%w: character at offset %d is not one of [a-z0-9._-]", ErrInvalid, i)
		}
	}
	return nil
}
