//go:build linux

package main

import (
	"context"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/internal/syncbuf"
)

// terminal is a pseudo-terminal: the command gets its tty as stdin and
// stderr, and the test plays the person at the keyboard through its master
// side, seeing what the screen shows.
type terminal struct {
	master, tty *os.File
	screen      *syncbuf.Buffer
	done        chan struct{}
}

func newTerminal(t *testing.T) *terminal {
	t.Helper()
	master, tty, err := pty.Open()
	if err != nil {
		t.Fatalf("open a pseudo-terminal: %v", err)
	}
	term := &terminal{master: master, tty: tty, screen: &syncbuf.Buffer{}, done: make(chan struct{})}
	go func() {
		defer close(term.done)
		_, _ = io.Copy(term.screen, master) // ends when the pty is closed
	}()
	t.Cleanup(func() {
		_ = tty.Close()
		_ = master.Close()
		<-term.done
	})
	return term
}

// run executes the command with the terminal as stdin and stderr; typed
// is what the person types once the screen shows prompt — for a hidden
// prompt, once the terminal has stopped echoing, as a person would: keys
// typed ahead of a prompt are echoed by any terminal.
func (term *terminal) run(t *testing.T, c *cli, prompt, typed string, hidden bool, args ...string) (result, string) {
	t.Helper()
	out := &syncbuf.Buffer{}
	c.trans.add(out)
	c.trans.add(term.screen)
	done := make(chan int, 1)
	go func() {
		done <- execute(context.Background(), newRootCmd(term.tty, out, term.tty, c.envFunc(nil)), args, term.tty)
	}()
	typedIn := false
	t.Cleanup(func() {
		// The prompt never came (the test failed): type anyway, then end
		// the input (Ctrl-D), so that a command reading to the end stops.
		if !typedIn {
			_, _ = io.WriteString(term.master, typed+"\x04")
			select {
			case <-done:
			case <-time.After(awaitDeadline):
			}
		}
	})
	term.screen.WaitFor(t, prompt, awaitDeadline)
	if hidden {
		poll.Until(t, awaitDeadline, "the terminal to stop echoing", func() bool {
			tio, err := unix.IoctlGetTermios(int(term.tty.Fd()), unix.TCGETS)
			return err == nil && tio.Lflag&unix.ECHO == 0
		})
	}
	if _, err := io.WriteString(term.master, typed); err != nil {
		t.Fatal(err)
	}
	typedIn = true
	select {
	case code := <-done:
		return result{stdout: out.String(), code: code}, term.screen.String()
	case <-time.After(awaitDeadline):
		t.Fatalf("the command did not finish after the person typed; the screen shows:\n%q", term.screen.String())
		return result{}, ""
	}
}

// show runs a command whose stdout and stderr are the terminal's screen,
// and returns what the screen shows once it ends.
func (term *terminal) show(t *testing.T, c *cli, args ...string) (int, string) {
	t.Helper()
	c.trans.add(term.screen)
	code := execute(context.Background(), newRootCmd(strings.NewReader(""), term.tty, term.tty, c.envFunc(nil)), args, term.tty)
	// What the command wrote is on the screen once a marker written after
	// it is.
	const marker = "--end of output--"
	if _, err := io.WriteString(term.tty, marker); err != nil {
		t.Fatal(err)
	}
	return code, term.screen.WaitFor(t, marker, awaitDeadline)
}

// TestTokenJSONOnTerminalWarns: token get --json prints the access token;
// on a terminal a warning says so.
func TestTokenJSONOnTerminalWarns(t *testing.T) {
	c, _, install := setupCLITest(t)
	install("acme")
	code, screen := newTerminal(t).show(t, c, "token", "get", "acme", "--json")
	if code != exitOK || !strings.Contains(screen, "warning: this JSON includes the access token") || !strings.Contains(screen, `"accessToken"`) {
		t.Errorf("token get --json on a terminal: exit %d, screen:\n%s", code, screen)
	}
	r := c.run("", "token", "get", "acme", "--json").expect(t, exitOK)
	if r.stderr != "" {
		t.Errorf("token get --json into a pipe warned: %s", r.stderr)
	}
}

// TestSecretFromTerminalIsNotEchoed: --client-secret-file - on a terminal
// prompts, and what the person types does not appear on the screen.
func TestSecretFromTerminalIsNotEchoed(t *testing.T) {
	c, _, _ := setupCLITest(t)
	const secret = "typed-client-secret-93be"
	term := newTerminal(t)
	r, screen := term.run(t, c, "Client secret (input hidden", secret+"\n", true,
		"credentials", "put", "tty", "--provider", "oauth2", "--token-url", "https://idp.example.com/token",
		"--client-id", "x", "--client-secret-file", "-")
	r.expect(t, exitOK)
	if strings.Contains(screen, secret) {
		t.Errorf("the secret was echoed on the terminal:\n%q", screen)
	}
	if show := c.run("", "credentials", "show", "tty").expect(t, exitOK).stdout; !regexp.MustCompile(`(?m)^client secret +set$`).MatchString(show) {
		t.Errorf("the typed secret was not stored:\n%s", show)
	}
	c.trans.assertNoSecrets(t, secret)
}

// TestConfirmationNeedsATerminal: delete asks on a terminal and does what
// the person confirms; with stdin from /dev/null (a character device, not
// a terminal) it refuses with exit status 2 as documented, and deletes
// nothing.
func TestConfirmationNeedsATerminal(t *testing.T) {
	c, _, _ := setupCLITest(t)
	for _, id := range []string{"kept", "gone"} {
		c.run("", "credentials", "put", id, "--provider", "oauth2", "--token-url", "https://idp.example.com/token", "--client-id", "x").expect(t, exitOK)
	}

	devNull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()
	out, errOut := &syncbuf.Buffer{}, &syncbuf.Buffer{}
	code := execute(context.Background(), newRootCmd(devNull, out, errOut, c.envFunc(nil)), []string{"credentials", "delete", "kept"}, errOut)
	if code != exitUsage || !strings.Contains(errOut.String(), "refusing to delete kept without --yes: stdin is not a terminal") {
		t.Errorf("delete </dev/null: exit %d, stderr:\n%s", code, errOut.String())
	}
	c.run("", "credentials", "show", "kept").expect(t, exitOK)

	term := newTerminal(t)
	r, _ := term.run(t, c, "Type the credential id to confirm: ", "gone\n", false, "credentials", "delete", "gone")
	r.expect(t, exitOK)
	c.run("", "credentials", "show", "gone").expect(t, exitNotFound)
}
