// Package jsonrec encodes the JSON records the broker and its parts keep in
// the store, and refuses those of a newer format.
package jsonrec

import (
	"encoding/json"
	"fmt"
)

// Format versions the records. A reader accepts every format up to its
// own, so replicas can be upgraded one at a time; a newer format is refused
// rather than misread.
const Format = 1

// Encode returns v as a record.
func Encode(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("broker: encode record: %w", err)
	}
	return b, nil
}

// Decode reads raw into v, whose format field is *format, and refuses a
// format newer than Format.
func Decode(raw []byte, v any, format *int) error {
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("broker: decode record: %w", err)
	}
	if *format > Format {
		return fmt.Errorf("broker: record format %d is newer than this server understands (%d): upgrade it", *format, Format)
	}
	return nil
}
