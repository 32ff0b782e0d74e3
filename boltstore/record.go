package boltstore

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
)

const (
	// recordFormatV1 is the first byte of every record written by this
	// version. A later format gets a new number so that binaries of both
	// versions can tell records apart during a rolling upgrade.
	recordFormatV1 = 1

	nonceSize  = 12 // 96 bits, the GCM standard nonce
	tagSize    = 16
	headerSize = 1 + keyIDSize + 8
	// minRecordSize is a record sealing an empty value.
	minRecordSize = headerSize + nonceSize + tagSize

	// aadDomain starts the associated data of every seal, so no ciphertext
	// of another Rotavault component (or another format) opens as a record.
	aadDomain = "rotavault boltstore v1"

	// Kinds of sealed values: user records and the key check in the
	// metadata bucket can never stand in for each other.
	kindRecord   = "record"
	kindKeyCheck = "keycheck"
)

// SealedRecord is one decoded, still encrypted record of the on-disk format
// (see the package documentation). Nonce and Ciphertext alias the slice
// given to DecodeRecord.
type SealedRecord struct {
	// Format is the record format version, 1 for this package.
	Format byte
	// KeyID names the key the record is sealed under (Key.ID in binary).
	KeyID [8]byte
	// Version is the record's store version, at least 1.
	Version uint64
	// Nonce is the 12-byte GCM nonce.
	Nonce []byte
	// Ciphertext is the sealed value followed by the 16-byte GCM tag.
	Ciphertext []byte
}

// KeyIDString returns KeyID as Key.ID prints it.
func (r SealedRecord) KeyIDString() string {
	return hex.EncodeToString(r.KeyID[:])
}

// DecodeRecord parses one record of the on-disk format without decrypting
// it. It accepts any input without panicking: input that is not a record is
// an error wrapping ErrCorrupt, a record of a newer format one wrapping
// ErrUnsupportedFormat. It is safe for concurrent use.
func DecodeRecord(raw []byte) (SealedRecord, error) {
	r, err := decodeRecord(raw)
	if err != nil {
		return SealedRecord{}, fmt.Errorf("boltstore: decode record: %w", err)
	}
	return r, nil
}

func decodeRecord(raw []byte) (SealedRecord, error) {
	if len(raw) < 1 {
		return SealedRecord{}, fmt.Errorf("empty record: %w", ErrCorrupt)
	}
	switch format := raw[0]; {
	case format == 0:
		return SealedRecord{}, fmt.Errorf("record format byte 0: %w", ErrCorrupt)
	case format > recordFormatV1:
		return SealedRecord{}, fmt.Errorf("record format %d is newer than %d: %w", format, recordFormatV1, ErrUnsupportedFormat)
	}
	if len(raw) < minRecordSize {
		return SealedRecord{}, fmt.Errorf("record of %d bytes, want at least %d: %w", len(raw), minRecordSize, ErrCorrupt)
	}
	r := SealedRecord{Format: raw[0]}
	copy(r.KeyID[:], raw[1:1+keyIDSize])
	r.Version = binary.BigEndian.Uint64(raw[1+keyIDSize : headerSize])
	if r.Version == 0 {
		return SealedRecord{}, fmt.Errorf("record version 0: %w", ErrCorrupt)
	}
	r.Nonce = raw[headerSize : headerSize+nonceSize]
	r.Ciphertext = raw[headerSize+nonceSize:]
	return r, nil
}

// appendHeader appends the record header: the bytes before the nonce.
func appendHeader(dst []byte, format byte, keyID [keyIDSize]byte, version uint64) []byte {
	dst = append(dst, format)
	dst = append(dst, keyID[:]...)
	return binary.BigEndian.AppendUint64(dst, version)
}

// encode is the inverse of DecodeRecord.
func (r SealedRecord) encode() []byte {
	out := make([]byte, 0, headerSize+len(r.Nonce)+len(r.Ciphertext))
	out = appendHeader(out, r.Format, r.KeyID, r.Version)
	out = append(out, r.Nonce...)
	return append(out, r.Ciphertext...)
}

// additionalData binds a seal to its header, its kind and its key.
func additionalData(header []byte, kind, key string) []byte {
	ad := make([]byte, 0, len(aadDomain)+1+len(kind)+1+len(header)+len(key))
	ad = append(ad, aadDomain...)
	ad = append(ad, 0)
	ad = append(ad, kind...)
	ad = append(ad, 0) // kinds and keys hold no NUL: the split is unambiguous
	ad = append(ad, header...)
	return append(ad, key...)
}

// sealer seals and opens records under one key.
type sealer struct {
	id   [keyIDSize]byte
	aead cipher.AEAD // from NewGCMWithRandomNonce: nonce || ciphertext || tag
}

func newSealer(k Key) (*sealer, error) {
	sealKey := derive(k.material[:], sealKeyLabel)
	defer clear(sealKey)
	block, err := aes.NewCipher(sealKey)
	if err != nil {
		return nil, fmt.Errorf("boltstore: key %s: %w", k.ID(), err)
	}
	// Random nonces generated inside the AEAD: the only GCM mode allowed
	// under GODEBUG=fips140=only.
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return nil, fmt.Errorf("boltstore: key %s: %w", k.ID(), err)
	}
	return &sealer{id: k.id, aead: aead}, nil
}

func (s *sealer) idString() string {
	return hex.EncodeToString(s.id[:])
}

// seal returns the encoded record of value at version under kind/key.
func (s *sealer) seal(kind, key string, version uint64, value []byte) []byte {
	out := make([]byte, 0, headerSize+nonceSize+len(value)+tagSize)
	out = appendHeader(out, recordFormatV1, s.id, version)
	ad := additionalData(out, kind, key)
	return s.aead.Seal(out, nil, value, ad)
}

// keyring holds the key that seals new records and every key that may open
// existing ones. It is immutable once built; Store swaps whole keyrings.
type keyring struct {
	current *sealer
	byID    map[[keyIDSize]byte]*sealer
}

func newKeyring(current Key, previous []Key) (*keyring, error) {
	if !current.set {
		return nil, errors.New("boltstore: no key given")
	}
	cur, err := newSealer(current)
	if err != nil {
		return nil, err
	}
	kr := &keyring{current: cur, byID: map[[keyIDSize]byte]*sealer{cur.id: cur}}
	for i, k := range previous {
		if !k.set {
			return nil, fmt.Errorf("boltstore: previous key %d is the zero Key", i)
		}
		if _, ok := kr.byID[k.id]; ok {
			continue
		}
		s, err := newSealer(k)
		if err != nil {
			return nil, err
		}
		kr.byID[s.id] = s
	}
	return kr, nil
}

// with returns a keyring sealing under current that still opens everything
// kr opens.
func (kr *keyring) with(current *sealer) *keyring {
	byID := maps.Clone(kr.byID)
	byID[current.id] = current
	return &keyring{current: current, byID: byID}
}

// ids returns the ids of the keys kr opens, for error messages.
func (kr *keyring) ids() []string {
	ids := make([]string, 0, len(kr.byID))
	for id := range kr.byID {
		ids = append(ids, hex.EncodeToString(id[:]))
	}
	slices.Sort(ids)
	return ids
}

// open decodes and decrypts raw, the stored record of kind/key. It returns
// the decoded header with the value. Errors wrap ErrCorrupt,
// ErrUnsupportedFormat or ErrUnknownKey.
func (kr *keyring) open(kind, key string, raw []byte) (SealedRecord, []byte, error) {
	r, err := decodeRecord(raw)
	if err != nil {
		return SealedRecord{}, nil, err
	}
	s, ok := kr.byID[r.KeyID]
	if !ok {
		return SealedRecord{}, nil, fmt.Errorf("sealed under key id %s, not among the configured keys %v (current %s): %w",
			r.KeyIDString(), kr.ids(), kr.current.idString(), ErrUnknownKey)
	}
	ad := additionalData(raw[:headerSize], kind, key)
	// The random-nonce AEAD expects the nonce in front of the ciphertext,
	// which is exactly how the record stores them.
	value, err := s.aead.Open(nil, nil, raw[headerSize:], ad)
	if err != nil {
		return SealedRecord{}, nil, fmt.Errorf("record fails authentication (altered, or moved from another key or version): %w", ErrCorrupt)
	}
	if value == nil {
		value = []byte{}
	}
	return r, value, nil
}
