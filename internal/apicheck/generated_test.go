// Package apicheck guards the wire contract: the committed generated code
// must be what the committed protos produce.
package apicheck

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestGeneratedCodeIsCurrent(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(root, ".tools", "bin")
	if _, err := os.Stat(filepath.Join(bin, "buf")); err != nil {
		t.Fatalf("buf is not installed in .tools/bin: run scripts/test (or scripts/tools) first")
	}
	out := t.TempDir()
	cmd := exec.Command(filepath.Join(bin, "buf"), "generate", "--output", out)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("buf generate: %v\n%s", err, msg)
	}
	fresh := readTree(t, filepath.Join(out, "gen"))
	committed := readTree(t, filepath.Join(root, "gen"))
	for name, want := range fresh {
		if got, ok := committed[name]; !ok {
			t.Errorf("gen/%s is missing: run scripts/generate and commit", name)
		} else if !bytes.Equal(got, want) {
			t.Errorf("gen/%s is stale: run scripts/generate and commit", name)
		}
	}
	for name := range committed {
		if _, ok := fresh[name]; !ok {
			t.Errorf("gen/%s is not generated from any proto: remove it", name)
		}
	}
}

func readTree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := make(map[string][]byte)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		files[rel], err = os.ReadFile(path)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}
