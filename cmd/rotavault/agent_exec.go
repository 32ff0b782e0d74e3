package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	rvclient "github.com/rotavault/rotavault/client"
)

// execSpec is the command `agent --exec` runs.
type execSpec struct {
	credential  string
	argv        []string
	stopSignal  os.Signal
	stopTimeout time.Duration
}

// The variables `agent --exec` sets for its command (it reads none of
// them).
const (
	envAccessToken     = envPrefix + "ACCESS_TOKEN"
	envTokenType       = envPrefix + "TOKEN_TYPE"
	envInstanceURL     = envPrefix + "INSTANCE_URL"
	envTokenExpiry     = envPrefix + "TOKEN_EXPIRY"
	envTokenGeneration = envPrefix + "TOKEN_GENERATION"
	envTokenUseUntil   = envPrefix + "TOKEN_USE_UNTIL"
)

// agentCommandEnv lists them, for the check that every ROTAVAULT_* name
// the docs mention means something.
var agentCommandEnv = []string{envAccessToken, envTokenType, envInstanceURL, envTokenExpiry, envTokenGeneration, envTokenUseUntil}

// stopSignals are the signals --exec-stop-signal accepts.
var stopSignals = map[string]syscall.Signal{
	"TERM": syscall.SIGTERM, "INT": syscall.SIGINT, "HUP": syscall.SIGHUP,
	"QUIT": syscall.SIGQUIT, "KILL": syscall.SIGKILL,
}

func parseStopSignal(name string) (os.Signal, error) {
	sig, ok := stopSignals[strings.TrimPrefix(strings.ToUpper(name), "SIG")]
	if !ok {
		return nil, usageErrorf("--exec-stop-signal %q: want TERM, INT, HUP, QUIT or KILL", name)
	}
	return sig, nil
}

// childExitError is the agent's end when its command exited by itself:
// the agent exits with the command's status.
type childExitError struct {
	argv0 string
	code  int
}

func (e *childExitError) Error() string {
	return fmt.Sprintf("agent: %s exited with status %d", e.argv0, e.code)
}

// supervisor runs the command of --exec with the latest token, restarting
// it when the token changes, as Vault Agent's exec mode does.
type supervisor struct {
	spec *execSpec
	logf func(format string, args ...any)
	// tokens holds the latest token not yet acted on (nil: none usable);
	// one slot, so an older one is replaced rather than queued.
	tokens chan *rvclient.Token
}

func newSupervisor(spec *execSpec, logf func(string, ...any)) *supervisor {
	return &supervisor{spec: spec, logf: logf, tokens: make(chan *rvclient.Token, 1)}
}

// update hands the supervisor a new token, or nil when there is none. Only
// the credential's follower calls it, so the slot is free after the drain.
func (s *supervisor) update(tok *rvclient.Token) {
	select {
	case <-s.tokens:
	default:
	}
	s.tokens <- tok
}

// child is one run of the command.
type child struct {
	cmd    *exec.Cmd
	exited chan error
}

// run supervises the command until ctx ends (it stops the command and
// returns nil) or the command exits by itself (*childExitError).
func (s *supervisor) run(ctx context.Context) error {
	var c *child
	defer func() {
		if c != nil {
			s.stop(c)
		}
	}()
	for {
		var exited chan error
		if c != nil {
			exited = c.exited
		}
		select {
		case <-ctx.Done():
			return nil
		case tok := <-s.tokens:
			if c != nil {
				s.logf("%s: the token changed: stopping %s (pid %d)", s.spec.credential, s.spec.argv[0], c.cmd.Process.Pid)
				s.stop(c)
				c = nil
			}
			if tok == nil {
				continue
			}
			started, err := s.start(tok)
			if err != nil {
				return fmt.Errorf("agent: start %s: %w", s.spec.argv[0], err)
			}
			c = started
			s.logf("%s: started %s (pid %d) with generation %d", s.spec.credential, s.spec.argv[0], c.cmd.Process.Pid, tok.Generation)
		case err := <-exited:
			c = nil
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				return fmt.Errorf("agent: %s: %w", s.spec.argv[0], err)
			}
			if code == 0 {
				s.logf("%s: %s exited with status 0", s.spec.credential, s.spec.argv[0])
				return nil
			}
			return &childExitError{argv0: s.spec.argv[0], code: code}
		}
	}
}

func (s *supervisor) start(tok *rvclient.Token) (*child, error) {
	cmd := exec.Command(s.spec.argv[0], s.spec.argv[1:]...)
	cmd.Env = append(commandEnv(os.Environ()),
		envAccessToken+"="+tok.AccessToken,
		envTokenType+"="+tok.TokenType,
		envInstanceURL+"="+tok.InstanceURL,
		envTokenExpiry+"="+tok.Expiry.UTC().Format(time.RFC3339),
		envTokenUseUntil+"="+tok.UsableUntil().UTC().Format(time.RFC3339),
		envTokenGeneration+"="+strconv.FormatUint(tok.Generation, 10),
	)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, exited: make(chan error, 1)}
	go func() { c.exited <- cmd.Wait() }()
	return c, nil
}

// commandEnv is the agent's environment without any ROTAVAULT_* variable:
// the agent's own settings (its server, certificates, bearer token file,
// ROTAVAULT_AGENT_*) are its configuration, not the command's — a command
// that runs rotavault itself must not act as the agent, with the agent's
// identity. Server settings (the store key) have no business there either,
// and token variables of an agent further out are replaced by this one's.
func commandEnv(environ []string) []string {
	env := make([]string, 0, len(environ))
	for _, kv := range environ {
		if !strings.HasPrefix(kv, envPrefix) {
			env = append(env, kv)
		}
	}
	return env
}

// stop sends the stop signal, waits up to the stop timeout, then kills,
// and waits for the command to be gone.
func (s *supervisor) stop(c *child) {
	_ = c.cmd.Process.Signal(s.spec.stopSignal)
	t := time.NewTimer(s.spec.stopTimeout)
	defer t.Stop()
	select {
	case <-c.exited:
		return
	case <-t.C:
	}
	s.logf("%s: %s (pid %d) did not exit within %s: killing it", s.spec.credential, s.spec.argv[0], c.cmd.Process.Pid, s.spec.stopTimeout)
	_ = c.cmd.Process.Kill()
	<-c.exited
}
