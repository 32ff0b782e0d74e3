package main

import (
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit codes, so that a wrapper script can tell failures apart without
// reading text. The README's table documents them; exitCodeTable is its
// source.
const (
	exitOK = 0
	// exitError: the operation failed for another reason.
	exitError = 1
	// exitUsage: the command was misused — a bad flag or argument, refused
	// by the CLI or by the server (INVALID_ARGUMENT). Retrying the same
	// command cannot help.
	exitUsage = 2
	// exitNotFound: no such credential (NOT_FOUND).
	exitNotFound = 3
	// exitNotAuthorized: the server did not accept the caller's identity
	// (UNAUTHENTICATED) or the policy does not allow the call
	// (PERMISSION_DENIED).
	exitNotAuthorized = 4
	// exitUnavailable: worth a retry, after retry_after where given — the
	// server, the store or the provider is unreachable or busy
	// (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, RESOURCE_EXHAUSTED).
	exitUnavailable = 5
	// exitReauthRequired: the credential's token family is revoked or was
	// never installed (FAILED_PRECONDITION, reason
	// REAUTHENTICATION_REQUIRED): alert a person, who runs rotavault reauth.
	exitReauthRequired = 6
	// exitAlreadyExists: the credential exists (ALREADY_EXISTS).
	exitAlreadyExists = 7
	// exitCursorExpired: watch's cursor is older than the server's notice
	// log (OUT_OF_RANGE, reason CURSOR_EXPIRED): resynchronise with
	// credentials list, then watch without --cursor.
	exitCursorExpired = 8
)

// exitCode classifies a failed command. usage is true for cobra's own
// complaints and the commands' usage errors.
func exitCode(err error, usage bool) int {
	var u *usageError
	if usage || errors.As(err, &u) {
		return exitUsage
	}
	if errors.Is(err, errNoStart) {
		return exitUnavailable
	}
	// agent --exec passes on its command's own exit status.
	var child *childExitError
	if errors.As(err, &child) {
		return child.code
	}
	st, ok := grpcStatus(err)
	if !ok {
		return exitError
	}
	switch st.Code() {
	case codes.InvalidArgument:
		return exitUsage
	case codes.NotFound:
		return exitNotFound
	case codes.Unauthenticated, codes.PermissionDenied:
		return exitNotAuthorized
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.ResourceExhausted:
		return exitUnavailable
	case codes.AlreadyExists:
		return exitAlreadyExists
	case codes.OutOfRange:
		return exitCursorExpired
	case codes.FailedPrecondition:
		if errorReason(st) == reasonReauthRequired {
			return exitReauthRequired
		}
	}
	return exitError
}

// wantsJSON reports whether the command that failed was given --json.
func wantsJSON(cmd *cobra.Command) bool {
	f := cmd.Flags().Lookup("json")
	return f != nil && f.Value.String() == "true"
}

// jsonError is how a failure looks on stderr under --json: one object on
// one line. Code is the gRPC code's name when the server answered, else
// USAGE (exit 2), UNAVAILABLE (no server answered) or ERROR.
type jsonError struct {
	ExitCode int    `json:"exit_code"`
	Code     string `json:"code"`
	Reason   string `json:"reason,omitempty"`
	Message  string `json:"message"`
	// RetryAfter is the server's RetryInfo, as a protobuf JSON duration
	// ("1.5s").
	RetryAfter string `json:"retry_after,omitempty"`
	Hint       string `json:"hint,omitempty"`
}

func writeJSONError(w io.Writer, err error, exit int) {
	je := jsonError{ExitCode: exit, Message: err.Error()}
	switch st, ok := grpcStatus(err); {
	case ok:
		je.Code, je.Reason, je.Message = codeName(st.Code()), errorReason(st), userMessage(st)
		for _, d := range st.Details() {
			if ri, ok := d.(*errdetails.RetryInfo); ok {
				je.RetryAfter = strconv.FormatFloat(ri.GetRetryDelay().AsDuration().Seconds(), 'f', -1, 64) + "s"
			}
		}
	case exit == exitUsage:
		je.Code = "USAGE"
	case exit == exitUnavailable:
		je.Code = codeName(codes.Unavailable)
	default:
		je.Code = "ERROR"
	}
	var h *hintedError
	if errors.As(err, &h) {
		je.Hint = h.hint
	}
	b, mErr := json.Marshal(je)
	if mErr != nil {
		b = []byte(`{"exit_code":1,"code":"ERROR","message":"cannot encode the error"}`)
	}
	_, _ = w.Write(append(b, '\n'))
}

// userMessage is a status message in the CLI's words: without the Go
// package prefixes the server's messages carry ("broker: "), and naming
// the flag (--base-url) where the server names a request field
// (spec.base_url).
func userMessage(st *status.Status) string {
	msg := st.Message()
	for _, d := range st.Details() {
		br, ok := d.(*errdetails.BadRequest)
		if !ok {
			continue
		}
		for _, v := range br.GetFieldViolations() {
			if flag := flagForField(v.GetField()); flag != "" {
				return "invalid " + flag + ": " + terminalSafe(v.GetDescription())
			}
		}
	}
	for _, prefix := range []string{"broker: ", "provider: ", "server: "} {
		msg = strings.TrimPrefix(msg, prefix)
	}
	// Status messages can carry provider text: no control characters reach
	// the terminal.
	return terminalSafe(msg)
}

// flagForField names the flag that sets a request field, or "".
func flagForField(field string) string {
	path := strings.TrimPrefix(field, "spec.")
	for _, f := range specFields {
		if f.path == path {
			return "--" + f.flag
		}
	}
	if field == "spec.provider_kind" {
		return "--provider"
	}
	return ""
}
