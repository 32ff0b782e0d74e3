package boltstore

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseKey(t *testing.T) {
	raw := make([]byte, keySize)
	for i := range raw {
		raw[i] = byte(0xf0 + i) // high bytes: std and URL encodings differ
	}
	want := newKey(raw).ID()
	std := base64.StdEncoding.EncodeToString(raw)
	if !strings.ContainsAny(std, "+/") {
		t.Fatalf("test key %q does not exercise the alphabet difference", std)
	}
	tests := []struct {
		name    string
		in      string
		wantErr bool
	}{
		{"std padded", std, false},
		{"std raw", base64.RawStdEncoding.EncodeToString(raw), false},
		{"url padded", base64.URLEncoding.EncodeToString(raw), false},
		{"url raw", base64.RawURLEncoding.EncodeToString(raw), false},
		{"surrounding whitespace", "  \t" + std + "\r\n\n", false},
		{"31 bytes", base64.StdEncoding.EncodeToString(raw[:31]), true},
		{"33 bytes", base64.StdEncoding.EncodeToString(append(bytes.Clone(raw), 0)), true},
		{"empty", "", true},
		{"only whitespace", " \n", true},
		{"mixed alphabets", strings.Replace(base64.RawURLEncoding.EncodeToString(raw), "_", "/", 1), true},
		{"not base64", "this is not a key at all, not even close!!!", true},
		{"hex", fmt.Sprintf("%x", raw), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParseKey(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseKey accepted %q", tt.in)
				}
				if len(tt.in) > 8 && strings.Contains(err.Error(), strings.TrimSpace(tt.in)) {
					t.Fatalf("error %q quotes the input", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseKey: %v", err)
			}
			if k.ID() != want {
				t.Fatalf("ID = %s, want %s", k.ID(), want)
			}
		})
	}
}

func TestKeyIDs(t *testing.T) {
	a, b := testKey(t, 1), testKey(t, 2)
	if len(a.ID()) != 2*keyIDSize {
		t.Fatalf("ID %q: want %d hex digits", a.ID(), 2*keyIDSize)
	}
	if a.ID() == b.ID() {
		t.Fatal("two keys share an id")
	}
	if a.ID() != testKey(t, 1).ID() {
		t.Fatal("the id of a key is not stable")
	}
	if (Key{}).ID() != "" {
		t.Fatal("zero Key has an id")
	}
}

func TestKeyNeverPrintsMaterial(t *testing.T) {
	raw := bytes.Repeat([]byte{0xab}, keySize)
	enc := base64.StdEncoding.EncodeToString(raw)
	k, err := ParseKey(enc)
	if err != nil {
		t.Fatal(err)
	}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("key", "key", k, "ptr", &k)
	outputs := []string{
		fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %s %q %x %X %d", k, k, k, k, k, k, k, k),
		fmt.Sprintf("%v %+v", &k, []Key{k}), fmt.Sprintf("%#v", Options{PreviousKeys: []Key{k}}),
		k.String(), logged.String(),
	}
	for _, out := range outputs {
		for _, leak := range []string{enc, strings.TrimRight(enc, "="), "abab", "171 171", "0xab", "ABAB"} {
			if strings.Contains(out, leak) {
				t.Errorf("output %q contains key material %q", out, leak)
			}
		}
	}
	if !strings.Contains(fmt.Sprint(k), k.ID()) || !strings.Contains(logged.String(), k.ID()) {
		t.Errorf("printing a key should name its id %s: %q, %q", k.ID(), fmt.Sprint(k), logged.String())
	}
}

func TestGenerateAndLoadKeyFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "secrets")
	path := filepath.Join(dir, "store.key")
	k, err := GenerateKeyFile(path)
	if err != nil {
		t.Fatalf("GenerateKeyFile: %v", err)
	}
	for p, want := range map[string]fs.FileMode{dir: 0o700, path: 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %04o, want %04o", p, got, want)
		}
	}
	loaded, err := LoadKeyFile(path)
	if err != nil {
		t.Fatalf("LoadKeyFile: %v", err)
	}
	if loaded.ID() != k.ID() || loaded != k {
		t.Fatalf("loaded key %s differs from generated %s", loaded.ID(), k.ID())
	}

	// Never overwrite a key: the store sealed under it would be lost.
	if _, err := GenerateKeyFile(path); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("GenerateKeyFile over an existing file: err = %v, want fs.ErrExist", err)
	}
	again, err := LoadKeyFile(path)
	if err != nil || again != k {
		t.Fatalf("key file changed by the refused GenerateKeyFile (err %v)", err)
	}

	other, err := GenerateKeyFile(filepath.Join(dir, "other.key"))
	if err != nil {
		t.Fatal(err)
	}
	if other.ID() == k.ID() {
		t.Fatal("two generated keys are equal")
	}
}

func TestLoadKeyFileRefuses(t *testing.T) {
	dir := t.TempDir()
	good := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, keySize)) + "\n"
	tests := []struct {
		name    string
		content string
		mode    fs.FileMode
		wantMsg string
	}{
		{"world readable", good, 0o644, "chmod 600"},
		{"group readable", good, 0o640, "chmod 600"},
		{"group writable", good, 0o620, "chmod 600"},
		{"not a key", "hello\n", 0o600, "base64"},
		{"short key", base64.StdEncoding.EncodeToString([]byte("short")), 0o600, "bytes"},
		{"huge file", strings.Repeat("A", maxKeyFileSize+10), 0o600, "larger"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil {
				t.Fatal(err)
			}
			_, err := LoadKeyFile(path)
			if err == nil {
				t.Fatal("LoadKeyFile accepted the file")
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("error %q does not explain (want %q)", err, tt.wantMsg)
			}
			if strings.Contains(err.Error(), strings.TrimSpace(good)) {
				t.Fatalf("error %q quotes the key", err)
			}
		})
	}
	if _, err := LoadKeyFile(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: err = %v, want fs.ErrNotExist", err)
	}
	if _, err := LoadKeyFile(dir); err == nil {
		t.Fatal("LoadKeyFile accepted a directory")
	}
}
