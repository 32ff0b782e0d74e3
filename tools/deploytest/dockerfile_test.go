package deploytest

import (
	"bytes"
	"debug/elf"
	"go/version"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"golang.org/x/mod/modfile"
)

// dockerfile is the repository's Dockerfile as buildkit reads it.
type dockerfile struct {
	stages   []instructions.Stage
	metaArgs []instructions.ArgCommand
	lex      *shell.Lex
}

// parseDockerfile parses the Dockerfile with buildkit's parser and its
// linter's parse-time rules; a warning of either fails the test.
func parseDockerfile(t *testing.T) dockerfile {
	t.Helper()
	res, err := parser.Parse(bytes.NewReader(readRepoFile(t, "Dockerfile")))
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range res.Warnings {
		t.Errorf("Dockerfile:%d: %s", w.Location.Start.Line, w.Short)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, msg string, loc []parser.Range) {
		t.Errorf("Dockerfile lint %s at %v: %s", rule, loc, msg)
	}})
	stages, metaArgs, err := instructions.Parse(res.AST, lint)
	if err != nil {
		t.Fatal(err)
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a build stage and a final one", len(stages))
	}
	return dockerfile{stages: stages, metaArgs: metaArgs, lex: shell.NewLex(res.EscapeToken)}
}

// expand substitutes the global ARGs (defaults, or overrides) in word, as
// buildkit does in FROM lines.
func (d dockerfile) expand(t *testing.T, word string, overrides map[string]string) string {
	t.Helper()
	var env []string
	for _, a := range d.metaArgs {
		for _, kv := range a.Args {
			env = append(env, kv.Key+"="+argValue(kv, overrides))
		}
	}
	out, _, err := d.lex.ProcessWord(word, shell.EnvsFromSlice(env))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func argValue(kv instructions.KeyValuePairOptional, overrides map[string]string) string {
	if v, ok := overrides[kv.Key]; ok {
		return v
	}
	return kv.ValueString()
}

func (d dockerfile) final() instructions.Stage { return d.stages[len(d.stages)-1] }

// stage returns the stage named name.
func (d dockerfile) stage(t *testing.T, name string) instructions.Stage {
	t.Helper()
	for _, s := range d.stages {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no stage %q", name)
	return instructions.Stage{}
}

// imageConfig is what the final stage sets for the container.
type imageConfig struct {
	user       string
	uid, gid   int
	volumes    []string
	entrypoint []string
	cmd        []string
	copies     []*instructions.CopyCommand
}

func (d dockerfile) imageConfig(t *testing.T) imageConfig {
	t.Helper()
	var c imageConfig
	for _, cmd := range d.final().Commands {
		switch cmd := cmd.(type) {
		case *instructions.UserCommand:
			c.user = cmd.User
		case *instructions.VolumeCommand:
			c.volumes = append(c.volumes, cmd.Volumes...)
		case *instructions.EntrypointCommand:
			if cmd.PrependShell {
				t.Errorf("ENTRYPOINT in shell form: %s (signals would go to the shell, and scratch has none)", cmd)
			}
			c.entrypoint = cmd.CmdLine
		case *instructions.CmdCommand:
			if cmd.PrependShell {
				t.Errorf("CMD in shell form: %s", cmd)
			}
			c.cmd = cmd.CmdLine
		case *instructions.CopyCommand:
			c.copies = append(c.copies, cmd)
		}
	}
	var err error
	uid, gid, found := strings.Cut(c.user, ":")
	if c.uid, err = strconv.Atoi(uid); err != nil {
		t.Fatalf("USER %q: not a numeric uid (Kubernetes' runAsNonRoot can only check a numeric one)", c.user)
	}
	c.gid = c.uid
	if found {
		if c.gid, err = strconv.Atoi(gid); err != nil {
			t.Fatalf("USER %q: not a numeric gid", c.user)
		}
	}
	return c
}

var distrolessByDigest = regexp.MustCompile(`^gcr\.io/distroless/[a-z0-9.-]+(:[a-z0-9.-]+)?@sha256:[0-9a-f]{64}$`)

// TestDockerfileFinalStage: the image is a static binary on scratch (or
// distroless pinned by digest), runs as a numeric non-root user, keeps its
// data in a volume that user owns, and starts the server on it.
func TestDockerfileFinalStage(t *testing.T) {
	d := parseDockerfile(t)
	if base := d.expand(t, d.final().BaseName, nil); base != "scratch" && !distrolessByDigest.MatchString(base) {
		t.Fatalf("final stage FROM %s: want scratch or distroless pinned by digest", base)
	}
	c := d.imageConfig(t)
	if c.uid == 0 || c.gid == 0 {
		t.Fatalf("USER %s: the image must not run as root", c.user)
	}
	if len(c.volumes) != 1 {
		t.Fatalf("VOLUME %v: want the data directory only", c.volumes)
	}
	data := c.volumes[0]
	if !containsArg(c.cmd, "--data-dir", data) {
		t.Errorf("CMD %v does not serve from the volume %s", c.cmd, data)
	}
	if len(c.entrypoint) != 1 || len(c.cmd) == 0 || c.cmd[0] != "serve" {
		t.Errorf("ENTRYPOINT %v CMD %v: want the binary, then serve", c.entrypoint, c.cmd)
	}
	owned := false
	for _, cp := range c.copies {
		if cp.DestPath == data {
			owned = cp.Chown == c.user
		}
	}
	if !owned {
		t.Errorf("the volume %s is not created owned by %s (COPY --chown)", data, c.user)
	}

	// The build stage's Go is at least what go.mod asks for.
	build := d.stage(t, "build")
	image := d.expand(t, build.BaseName, nil)
	goVersion, ok := strings.CutPrefix(strings.SplitN(image, "-", 2)[0], "golang:")
	if !ok {
		t.Fatalf("build stage FROM %s: want a golang image", image)
	}
	mod, err := modfile.ParseLax("go.mod", readRepoFile(t, "go.mod"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if version.Compare("go"+goVersion, "go"+mod.Go.Version) < 0 {
		t.Errorf("build stage Go %s is older than go.mod's go %s", goVersion, mod.Go.Version)
	}
}

// containsArg reports whether args hold flag=value or flag value.
func containsArg(args []string, flag, value string) bool {
	for i, a := range args {
		if a == flag+"="+value || (a == flag && i+1 < len(args) && args[i+1] == value) {
			return true
		}
	}
	return false
}

// checkStatic: the binary has no ELF interpreter and no shared library, so
// it runs on scratch; it has no symbols and no build paths.
func checkStatic(t *testing.T, img builtImage) {
	f, err := elf.Open(img.binary)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("the binary has an ELF interpreter (PT_INTERP): it is dynamically linked")
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Fatalf("the binary needs shared libraries %v (%v)", libs, err)
	}
	if f.Section(".symtab") != nil {
		t.Error("the binary carries a symbol table (-s)")
	}
	if raw, err := os.ReadFile(img.binary); err != nil || bytes.Contains(raw, []byte(img.context)) {
		t.Errorf("the binary contains its build directory %s (-trimpath) (%v)", img.context, err)
	}
}
