package boltstore

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/rotavault/rotavault/internal/fsutil"
)

const (
	keySize   = 32 // AES-256
	keyIDSize = 8

	// keyIDLabel and sealKeyLabel separate the two uses of the operator's
	// key: the public key id written into every record, and the AES key that
	// seals records. Neither reveals the other.
	keyIDLabel   = "rotavault key id"
	sealKeyLabel = "rotavault boltstore aes-256-gcm record key v1"

	// maxKeyFileSize bounds what LoadKeyFile reads: a key file is one
	// base64 line.
	maxKeyFileSize = 4096
)

// Key is a 32-byte AES-256 key with its id. Its zero value is no key: Open
// refuses it. A Key is an immutable value, safe to copy and to use from
// several goroutines.
//
// Printing a Key (fmt with any verb, slog) shows only its id, never the key
// material.
type Key struct {
	material [keySize]byte
	id       [keyIDSize]byte
	set      bool
}

func newKey(material []byte) Key {
	k := Key{set: true}
	copy(k.material[:], material)
	copy(k.id[:], derive(material, keyIDLabel))
	return k
}

// derive returns HMAC-SHA256(secret, label): a pseudorandom value bound to
// label, so keys derived for different uses are independent.
func derive(secret []byte, label string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	return m.Sum(nil)
}

// ID returns the key's id: 16 hex digits derived from the key, safe to log
// and to show an operator. It is empty for the zero Key.
func (k Key) ID() string {
	if !k.set {
		return ""
	}
	return hex.EncodeToString(k.id[:])
}

// String returns a description naming only the key id.
func (k Key) String() string {
	if !k.set {
		return "boltstore.Key(none)"
	}
	return "boltstore.Key(id " + k.ID() + ")"
}

// Format implements fmt.Formatter so that no verb (%x, %d, %#v...) reaches
// the key material through reflection.
func (k Key) Format(f fmt.State, _ rune) {
	io.WriteString(f, k.String())
}

// LogValue implements slog.LogValuer: logs show the key id only.
func (k Key) LogValue() slog.Value {
	return slog.StringValue(k.ID())
}

// ParseKey decodes a key written as base64 (standard or URL alphabet, padded
// or not) of exactly 32 bytes, ignoring surrounding whitespace. Errors never
// quote the input.
func ParseKey(encoded string) (Key, error) {
	s := strings.TrimRight(strings.TrimSpace(encoded), "=")
	enc := base64.RawStdEncoding
	if strings.ContainsAny(s, "-_") {
		enc = base64.RawURLEncoding
	}
	raw, err := enc.Strict().DecodeString(s)
	if err != nil {
		// err quotes an offset, not the text; still keep it out so a
		// mistyped secret never lands in a log.
		return Key{}, errors.New("boltstore: parse key: not valid base64")
	}
	if len(raw) != keySize {
		return Key{}, fmt.Errorf("boltstore: parse key: decodes to %d bytes, want %d", len(raw), keySize)
	}
	k := newKey(raw)
	clear(raw)
	return k, nil
}

// LoadKeyFile reads a key written by GenerateKeyFile (or any file holding
// the base64 of 32 bytes). It refuses a file that group or others may
// access, since anyone who reads the key reads every stored credential.
func LoadKeyFile(path string) (Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return Key{}, fmt.Errorf("boltstore: load key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Key{}, fmt.Errorf("boltstore: load key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return Key{}, fmt.Errorf("boltstore: load key: %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return Key{}, fmt.Errorf("boltstore: load key: %s has mode %04o, which lets group or others read it; run chmod 600 %s", path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return Key{}, fmt.Errorf("boltstore: load key: %w", err)
	}
	defer clear(data)
	if len(data) > maxKeyFileSize {
		return Key{}, fmt.Errorf("boltstore: load key: %s is larger than %d bytes, not a key file", path, maxKeyFileSize)
	}
	k, err := ParseKey(string(data))
	if err != nil {
		return Key{}, fmt.Errorf("boltstore: load key %s: %w", path, err)
	}
	return k, nil
}

// GenerateKeyFile creates path holding a new random key (base64, one line),
// with mode 0600, and returns the key. It never overwrites: an existing file
// is an error wrapping fs.ErrExist. A missing parent directory is created
// with mode 0700.
func GenerateKeyFile(path string) (Key, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return Key{}, fmt.Errorf("boltstore: generate key: %w", err)
	}
	raw := make([]byte, keySize)
	defer clear(raw)
	if _, err := rand.Read(raw); err != nil {
		return Key{}, fmt.Errorf("boltstore: generate key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return Key{}, fmt.Errorf("boltstore: generate key: %w", err)
	}
	_, err = io.WriteString(f, base64.StdEncoding.EncodeToString(raw)+"\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		// A half-written key file must not be mistaken for a key later.
		os.Remove(path)
		return Key{}, fmt.Errorf("boltstore: generate key: %w", err)
	}
	// A store sealed under a key whose file vanished in a power loss is
	// lost: make the directory entry durable too.
	if err := fsutil.SyncDir(filepath.Dir(path)); err != nil {
		return Key{}, fmt.Errorf("boltstore: generate key: %w", err)
	}
	return newKey(raw), nil
}
