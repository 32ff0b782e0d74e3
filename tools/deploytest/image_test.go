package deploytest

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// imageVersion is the VERSION build argument the tests build with.
const imageVersion = "v0.0.0-deploytest"

// TestImage builds the image's file system without a container daemon —
// the build stage's instructions run as written, in a copy of the build
// context — and checks what the image will run.
func TestImage(t *testing.T) {
	d := parseDockerfile(t)
	img := buildImage(t, d, map[string]string{"VERSION": imageVersion})
	t.Run("the binary is static", func(t *testing.T) { checkStatic(t, img) })
	t.Run("the version is stamped", func(t *testing.T) {
		out, err := exec.Command(img.binary, "version").Output()
		if got, want := string(out), "rotavault "+imageVersion+" "; err != nil || !strings.HasPrefix(got, want) {
			t.Fatalf("rotavault version = %q (%v), want it to start with %q", got, err, want)
		}
	})
	t.Run("serves with only the data directory writable", func(t *testing.T) { checkReadOnlyServe(t, img) })
}

// builtImage is an image's file systems, laid out below a temporary
// directory.
type builtImage struct {
	buildRoot string // the build stage's file system
	context   string // the build stage's WORKDIR, holding the copied context
	finalRoot string // the final stage's file system
	binary    string // the ENTRYPOINT, below finalRoot
	config    imageConfig
}

// absoluteArg finds an absolute path in a shell command line.
var absoluteArg = regexp.MustCompile(`(^|[\s=])/[A-Za-z]`)

// buildImage runs the build stage's instructions (WORKDIR, ARG, ENV, COPY
// from the context, RUN) with the image's root directory mapped below a
// temporary directory, then lays out the final stage from its COPY
// instructions. An instruction it does not know fails the test: teach it
// rather than skip it.
func buildImage(t *testing.T, d dockerfile, buildArgs map[string]string) builtImage {
	t.Helper()
	root := worldReadableTempDir(t)
	img := builtImage{buildRoot: filepath.Join(root, "build"), finalRoot: filepath.Join(root, "final"), config: d.imageConfig(t)}
	ignore := dockerignore(t)
	env := map[string]string{}
	expand := func(word string) string {
		var kv []string
		for k, v := range env {
			kv = append(kv, k+"="+v)
		}
		out, _, err := d.lex.ProcessWord(word, shell.EnvsFromSlice(kv))
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	cwd := "/"
	for _, cmd := range d.stage(t, "build").Commands {
		switch c := cmd.(type) {
		case *instructions.WorkdirCommand:
			cwd = path.Join(cwd, expand(c.Path))
			mkdirAll(t, filepath.Join(img.buildRoot, cwd))
		case *instructions.ArgCommand:
			for _, kv := range c.Args {
				env[kv.Key] = argValue(kv, buildArgs)
			}
		case *instructions.EnvCommand:
			for _, kv := range c.Env {
				env[kv.Key] = expand(kv.Value)
			}
		case *instructions.CopyCommand:
			if c.From != "" {
				t.Fatalf("%s: COPY --from in the build stage is not supported by this test", c)
			}
			dest := path.Join(cwd, expand(c.DestPath))
			for _, src := range c.SourcePaths {
				copyContext(t, ignore, expand(src), filepath.Join(img.buildRoot, dest), strings.HasSuffix(c.DestPath, "/") || len(c.SourcePaths) > 1)
			}
		case *instructions.RunCommand:
			argv := c.CmdLine
			if c.PrependShell {
				line := strings.Join(c.CmdLine, " ")
				if absoluteArg.MatchString(line) {
					t.Fatalf("%s: names an absolute path; this test runs RUN lines outside a container, so they must stay below WORKDIR", c)
				}
				argv = []string{"/bin/sh", "-c", line}
			}
			run := exec.Command(argv[0], argv[1:]...)
			run.Dir = filepath.Join(img.buildRoot, cwd)
			run.Env = os.Environ()
			for k, v := range env {
				run.Env = append(run.Env, k+"="+v)
			}
			if out, err := run.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", c, err, out)
			}
		default:
			t.Fatalf("%s: this test does not know how to run it in the build stage", c)
		}
	}
	img.context = filepath.Join(img.buildRoot, cwd)

	for _, cp := range img.config.copies {
		if cp.From != "build" {
			t.Fatalf("%s: the final stage copies only from the build stage", cp)
		}
		for _, src := range cp.SourcePaths {
			from := filepath.Join(img.buildRoot, src)
			if _, err := os.Lstat(from); errors.Is(err, fs.ErrNotExist) {
				// A file of the golang base image (its CA bundle): Debian's,
				// like this machine's.
				from = src
			}
			to := filepath.Join(img.finalRoot, cp.DestPath)
			if strings.HasSuffix(cp.DestPath, "/") {
				to = filepath.Join(to, filepath.Base(src))
			}
			copyTree(t, from, to)
		}
	}
	if len(img.config.entrypoint) == 0 {
		t.Fatal("no ENTRYPOINT")
	}
	img.binary = filepath.Join(img.finalRoot, img.config.entrypoint[0])
	return img
}

// dockerignore reads .dockerignore with buildkit's own reader and matcher.
func dockerignore(t *testing.T) *patternmatcher.PatternMatcher {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	return pm
}

// copyContext copies src (relative to the build context, the repository)
// to dest as COPY does: into dest when it is a directory, leaving out what
// .dockerignore excludes.
func copyContext(t *testing.T, ignore *patternmatcher.PatternMatcher, src, dest string, intoDir bool) {
	t.Helper()
	base := filepath.Join(repoRoot, src)
	err := filepath.WalkDir(base, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(repoRoot, p)
		if err != nil {
			return err
		}
		if rel != "." {
			if skip, err := ignore.MatchesOrParentMatches(filepath.ToSlash(rel)); err != nil || skip {
				if e.IsDir() {
					return filepath.SkipDir
				}
				return err
			}
		}
		within, err := filepath.Rel(base, p)
		if err != nil {
			return err
		}
		to := filepath.Join(dest, within)
		if !e.IsDir() && p == base && intoDir {
			to = filepath.Join(dest, filepath.Base(p))
		}
		return copyEntry(p, to, e)
	})
	if err != nil {
		t.Fatalf("COPY %s: %v", src, err)
	}
}

// copyTree copies a file or a directory tree.
func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, p)
		if err != nil {
			return err
		}
		return copyEntry(p, filepath.Join(to, rel), e)
	})
	if err != nil {
		t.Fatalf("copy %s: %v", from, err)
	}
}

func copyEntry(from, to string, e fs.DirEntry) error {
	info, err := e.Info()
	if err != nil {
		return err
	}
	if e.IsDir() {
		return os.MkdirAll(to, 0o755)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	if info.Mode()&fs.ModeSymlink != 0 {
		target, err := os.Readlink(from)
		if err != nil {
			return err
		}
		return os.Symlink(target, to)
	}
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, info.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func mkdirAll(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

// worldReadableTempDir is a temporary directory another user can traverse
// (t.TempDir's are 0700), removed when the test ends even where it was made
// read-only.
func worldReadableTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "rotavault-image-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				_ = os.Chmod(p, 0o755)
			}
			return nil
		})
		if err := os.RemoveAll(dir); err != nil {
			t.Error(err)
		}
	})
	return dir
}

// checkReadOnlyServe runs the final stage's ENTRYPOINT and CMD as the
// image's USER (when the test runs as root, as CI does), with every
// directory of the image read-only but the data volume, no HOME and no
// environment, as `docker run --read-only` would; it must answer /healthz
// and /readyz and write nothing outside the data directory.
func checkReadOnlyServe(t *testing.T, img builtImage) {
	c := img.config
	if c.uid == 0 || len(c.volumes) != 1 {
		t.Fatalf("USER %s VOLUME %v: see TestDockerfileFinalStage", c.user, c.volumes)
	}
	data := filepath.Join(img.finalRoot, c.volumes[0])
	// The store key, as a mounted secret readable by the user only.
	keyFile := filepath.Join(img.finalRoot, "run", "secrets", "store.key")
	mkdirAll(t, filepath.Dir(keyFile))
	if out, err := exec.Command(img.binary, "store", "generate-key", "--out", keyFile).CombinedOutput(); err != nil {
		t.Fatalf("generate-key: %v\n%s", err, out)
	}
	asRoot := os.Getuid() == 0
	owned := map[string]bool{keyFile: true}
	for _, cp := range c.copies {
		if cp.Chown != "" {
			owned[filepath.Join(img.finalRoot, cp.DestPath)] = true
		}
	}
	// Read-only everywhere, owned by root; the chowned paths belong to the
	// user. Without root the test runs as itself, and only the modes stop
	// it from writing.
	err := filepath.WalkDir(img.finalRoot, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		mode := fs.FileMode(0o555)
		if !e.IsDir() {
			info, err := e.Info()
			if err != nil {
				return err
			}
			mode = info.Mode().Perm() &^ 0o222
		}
		if owned[p] {
			if asRoot {
				if err := os.Chown(p, c.uid, c.gid); err != nil {
					return err
				}
			}
			mode = 0o400
			if e.IsDir() {
				mode = 0o700
			}
		}
		return os.Chmod(p, mode)
	})
	if err != nil {
		t.Fatal(err)
	}

	args := []string{}
	for _, a := range append(c.entrypoint[1:], c.cmd...) {
		args = append(args, inImage(img.finalRoot, a))
	}
	args = append(args, "--addr=127.0.0.1:0", "--http-listen=127.0.0.1:0", "--store-key-file="+keyFile)
	cmd := exec.Command(img.binary, args...)
	cmd.Dir = img.finalRoot
	cmd.Env = []string{}
	if asRoot {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(c.uid), Gid: uint32(c.gid)}}
	} else {
		// There is no /tmp in the image; as another user the test cannot
		// tell the server's files in the shared /tmp from its own.
		cmd.Env = []string{"TMPDIR=" + filepath.Join(img.finalRoot, "tmp")}
		t.Logf("not root: running as uid %d without switching users; /tmp is not checked", os.Getuid())
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	addr := make(chan string, 1)
	var logs strings.Builder
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logs.WriteString(sc.Text() + "\n")
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "HTTP endpoints serving" {
				addr <- line.Addr
			}
		}
		exited <- cmd.Wait()
	}()
	var httpAddr string
	select {
	case httpAddr = <-addr:
	case err := <-exited:
		t.Fatalf("serve exited before serving: %v\n%s", err, logs.String())
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		t.Fatalf("serve did not start serving HTTP within 60s\n%s", logs.String())
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get("http://" + httpAddr + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s = %s", p, resp.Status)
		}
	}
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !regexp.MustCompile(`(?m)^rotavault_build_info\{.*version="` + regexp.QuoteMeta(imageVersion) + `".*\} 1$`).Match(metrics) {
		t.Errorf("/metrics has no rotavault_build_info with version %q", imageVersion)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := <-exited; err != nil {
		t.Errorf("serve exited with %v after SIGTERM\n%s", err, logs.String())
	}

	entries, err := os.ReadDir(data)
	if err != nil || len(entries) == 0 {
		t.Fatalf("nothing written to the data directory %s (%v)", data, err)
	}
	if asRoot {
		// The user may write to the world-writable directories of this
		// machine, which the image does not have: it must not have.
		for _, dir := range []string{os.TempDir(), "/var/tmp", "/dev/shm"} {
			for _, p := range ownedBy(dir, c.uid, started, 3) {
				t.Errorf("serve wrote %s outside its data directory", p)
			}
		}
	}
}

// inImage maps an absolute path in a command-line argument (/path or
// --flag=/path) below root.
func inImage(root, arg string) string {
	if strings.HasPrefix(arg, "/") {
		return filepath.Join(root, arg)
	}
	if flag, value, ok := strings.Cut(arg, "="); ok && strings.HasPrefix(value, "/") {
		return flag + "=" + filepath.Join(root, value)
	}
	return arg
}

// ownedBy lists the entries below dir, at most depth levels down, that uid
// owns and that changed since since.
func ownedBy(dir string, uid int, since time.Time, depth int) []string {
	var found []string
	_ = filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if e.IsDir() && strings.Count(strings.TrimPrefix(p, dir), string(filepath.Separator)) >= depth {
			return filepath.SkipDir
		}
		info, err := e.Info()
		if err != nil {
			return nil
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && int(st.Uid) == uid && info.ModTime().After(since) {
			found = append(found, p)
		}
		return nil
	})
	return found
}
