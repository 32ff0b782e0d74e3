package boltstore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// fuzzKeyByte makes the key that sealed the valid seeds under
// testdata/fuzz/FuzzDecodeRecord: testKey(t, fuzzKeyByte), record key
// fuzzRecordKey.
const (
	fuzzKeyByte   = 0x5a
	fuzzRecordKey = "fam/seed"
)

func TestDecodeRecord(t *testing.T) {
	kr, err := newKeyring(testKey(t, 1), nil)
	if err != nil {
		t.Fatal(err)
	}
	valid := kr.current.seal(kindRecord, "k", 7, []byte("value"))
	tests := []struct {
		name    string
		raw     []byte
		wantErr error
	}{
		{"valid", valid, nil},
		{"empty value", kr.current.seal(kindRecord, "k", 1, nil), nil},
		{"nil", nil, ErrCorrupt},
		{"format 0", append([]byte{0}, valid[1:]...), ErrCorrupt},
		{"newer format", append([]byte{2}, valid[1:]...), ErrUnsupportedFormat},
		{"newer format, short", []byte{9}, ErrUnsupportedFormat},
		{"one byte short", valid[:minRecordSize-1], ErrCorrupt},
		{"header only", valid[:headerSize], ErrCorrupt},
		{"version 0", func() []byte {
			r := bytes.Clone(valid)
			clear(r[1+keyIDSize : headerSize])
			return r
		}(), ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := DecodeRecord(tt.raw)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("DecodeRecord: err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("DecodeRecord: %v", err)
			}
			if r.Format != recordFormatV1 || r.KeyIDString() != testKey(t, 1).ID() || len(r.Nonce) != nonceSize {
				t.Fatalf("DecodeRecord = %+v", r)
			}
			if !bytes.Equal(r.encode(), tt.raw) {
				t.Fatal("encode(DecodeRecord(raw)) != raw")
			}
		})
	}
	r, _ := DecodeRecord(valid)
	if r.Version != 7 {
		t.Fatalf("Version = %d, want 7", r.Version)
	}
	// Two seals of one value differ: nonces are fresh.
	if bytes.Equal(valid[headerSize:], kr.current.seal(kindRecord, "k", 7, []byte("value"))[headerSize:]) {
		t.Fatal("two seals of the same value are identical")
	}
}

// FuzzDecodeRecord feeds arbitrary bytes to the record parser and to the
// decryption path behind it: neither may panic, errors must be the
// documented ones, and whatever decodes must re-encode to the same bytes.
func FuzzDecodeRecord(f *testing.F) {
	kr, err := newKeyring(testKey(f, fuzzKeyByte), nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(kr.current.seal(kindRecord, fuzzRecordKey, 1, []byte("seed value")))
	f.Add(kr.current.seal(kindRecord, fuzzRecordKey, 1<<40, nil))
	f.Add([]byte{})
	f.Add([]byte{recordFormatV1})
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := DecodeRecord(raw)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupportedFormat) {
				t.Fatalf("DecodeRecord: undocumented error %v", err)
			}
			return
		}
		if r.Version == 0 || len(r.Nonce) != nonceSize || len(r.Ciphertext) < tagSize {
			t.Fatalf("DecodeRecord accepted a malformed record: %+v", r)
		}
		if !bytes.Equal(r.encode(), raw) {
			t.Fatal("encode(DecodeRecord(raw)) != raw")
		}
		_, value, err := kr.open(kindRecord, fuzzRecordKey, raw)
		switch {
		case err == nil:
			// Only a genuine seal opens; it round-trips.
			again := kr.current.seal(kindRecord, fuzzRecordKey, r.Version, value)
			if _, v2, err := kr.open(kindRecord, fuzzRecordKey, again); err != nil || !bytes.Equal(v2, value) {
				t.Fatalf("re-sealed record does not open: %v", err)
			}
		case errors.Is(err, ErrCorrupt), errors.Is(err, ErrUnknownKey):
		default:
			t.Fatalf("open: undocumented error %v", err)
		}
	})
}

// TestCommittedRecordStillOpens guards the on-disk format: a record sealed
// by an earlier build (the committed fuzz seed) must still open, or stores
// in the field become unreadable after an upgrade.
func TestCommittedRecordStillOpens(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzDecodeRecord", "valid_record"))
	if err != nil {
		t.Fatal(err)
	}
	lit, ok := strings.CutPrefix(strings.TrimSpace(string(data)), "go test fuzz v1\n[]byte(")
	if !ok {
		t.Fatalf("unexpected seed file layout: %q", data)
	}
	raw, err := strconv.Unquote(strings.TrimSuffix(lit, ")"))
	if err != nil {
		t.Fatal(err)
	}
	kr, err := newKeyring(testKey(t, fuzzKeyByte), nil)
	if err != nil {
		t.Fatal(err)
	}
	r, value, err := kr.open(kindRecord, fuzzRecordKey, []byte(raw))
	if err != nil {
		t.Fatalf("committed record no longer opens: %v", err)
	}
	if string(value) != "opens under the fuzz key" || r.Version != 3 {
		t.Fatalf("committed record opens as (%q, version %d)", value, r.Version)
	}
	if _, _, err := kr.open(kindRecord, "fam/other", []byte(raw)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("committed record opens under another key: err = %v", err)
	}
}
