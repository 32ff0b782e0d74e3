package provider

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Outcome says whether the provider may have processed a request that failed.
// The rotation logic decides from it whether sending the same refresh token
// again is safe. The zero value is OutcomeUnknown, the conservative answer.
type Outcome int

const (
	// OutcomeUnknown: the provider may have processed the request. The
	// connection failed or timed out after the request was fully written, a
	// 5xx other than an empty-bodied 503 came back, or a 2xx body could not
	// be understood. After a refresh the sent refresh token may be dead and
	// its replacement lost.
	OutcomeUnknown Outcome = iota
	// OutcomeRejected: the provider answered definitively and refused, for
	// example 400 invalid_grant. Permanent tells whether a person must act.
	OutcomeRejected
	// OutcomeNotProcessed: the provider surely did not process the request:
	// the request was never fully written (dial, TLS or write failure, or a
	// bad argument caught before sending), or the provider said it was not
	// handled (429, 408, an empty-bodied 503, rate_limit_exceeded,
	// temporarily_unavailable). Sending it again is safe.
	OutcomeNotProcessed
)

// String returns "unknown", "rejected" or "not processed".
func (o Outcome) String() string {
	switch o {
	case OutcomeUnknown:
		return "unknown"
	case OutcomeRejected:
		return "rejected"
	case OutcomeNotProcessed:
		return "not processed"
	default:
		return fmt.Sprintf("Outcome(%d)", int(o))
	}
}

// Sentinels matched by (*Error).Is. Check them with errors.Is.
var (
	// ErrInvalidGrant: the provider rejected the grant (refresh token or
	// authorization code) with invalid_grant: expired, revoked, or reused.
	ErrInvalidGrant = errors.New("provider: invalid grant")
	// ErrInvalidClient: the provider rejected the client with
	// invalid_client, invalid_client_id or unauthorized_client.
	ErrInvalidClient = errors.New("provider: invalid client")
	// ErrRedirect: the endpoint answered with a 3xx redirect, which this
	// package never follows (a token request must not be replayed at another
	// URL). The endpoint URL is probably wrong.
	ErrRedirect = errors.New("provider: endpoint redirected")
	// ErrInvalidArgument: the call was refused before anything was sent (an
	// empty token, client id or endpoint URL, an unspecified Kind).
	ErrInvalidArgument = errors.New("provider: invalid argument")
)

// Error is the error of every operation that talks to a provider. It never
// holds a token, secret or raw response body: Description is the provider's
// error_description cleaned of control characters and of every secret sent
// in the request in any encoding (raw, percent-, form- or JSON-escaped,
// base64 as in an echoed Authorization header), truncated to 512 runes; Err's
// text is redacted the same way. Fakes that build one should set
// Outcome: the zero value is OutcomeUnknown.
type Error struct {
	// Op is "refresh", "exchange", "revoke", "introspect",
	// "device_authorization" or "device_token" ("authorize" for
	// AuthCodeURL's argument errors).
	Op      string
	Outcome Outcome
	// StatusCode is the HTTP status, 0 if no response arrived.
	StatusCode int
	// Code is the OAuth "error" value, e.g. "invalid_grant"; empty when the
	// provider sent none.
	Code string
	// Description is the provider's error_description, or this package's
	// account of the failure when the provider gave none.
	Description string
	// RetryAfter is the provider's Retry-After (seconds or HTTP date),
	// capped at 24h; 0 when absent.
	RetryAfter time.Duration
	// Err is the underlying transport or body-read error, if any. It may
	// wrap context.DeadlineExceeded or context.Canceled.
	Err error
	// ClientAuth is how the request authenticated the client:
	// AuthSecretBasic, AuthSecretPost (also a public client's bare
	// client_id), or AuthDefault when nothing was sent. An invalid_client
	// answer is often about the method, not the secret.
	ClientAuth AuthMethod

	invalidArgument bool
}

// Error returns e.g. "provider: refresh: invalid_grant (HTTP 400): expired
// access/refresh token".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("provider: ")
	b.WriteString(e.Op)
	b.WriteString(": ")
	switch {
	case e.invalidArgument:
		b.WriteString("invalid argument")
	case e.Code != "":
		fmt.Fprintf(&b, "%s (HTTP %d)", e.Code, e.StatusCode)
	case e.StatusCode != 0:
		fmt.Fprintf(&b, "HTTP %d", e.StatusCode)
	case e.Description == "":
		b.WriteString("outcome ")
		b.WriteString(e.Outcome.String())
	}
	if e.Description != "" {
		if e.invalidArgument || e.Code != "" || e.StatusCode != 0 {
			b.WriteString(": ")
		}
		b.WriteString(e.Description)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Summary is Error without the provider's description and the transport
// error, e.g. "provider: refresh: invalid_grant (HTTP 400)": the provider's
// OAuth error code is the only provider text in it, and only when it looks
// like one (lowercase letters, digits and '_'; anything else reads
// "nonstandard error code"). It is for records that can never be edited,
// such as the audit trail, where even redacted provider text has no place.
func (e *Error) Summary() string {
	s := Error{Op: e.Op, Outcome: e.Outcome, StatusCode: e.StatusCode, Code: e.Code, invalidArgument: e.invalidArgument}
	if s.Code != "" && strings.TrimLeft(s.Code, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" {
		s.Code = "nonstandard error code"
	}
	return s.Error()
}

// Unwrap returns the underlying transport error, so errors.Is(err,
// context.DeadlineExceeded) works.
func (e *Error) Unwrap() error { return e.Err }

// Is matches ErrInvalidGrant and ErrInvalidClient when the provider rejected
// the request with the corresponding code (Outcome is OutcomeRejected),
// ErrRedirect for a 3xx answer, ErrInvalidArgument for a call refused
// before sending, and the device-flow poll answers (ErrAuthorizationPending,
// ErrSlowDown, ErrAccessDenied, ErrExpiredToken) by their OAuth code.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrInvalidGrant:
		return e.Outcome == OutcomeRejected && e.Code == "invalid_grant"
	case ErrInvalidClient:
		return e.Outcome == OutcomeRejected && isClientCode(e.Code)
	case ErrRedirect:
		return e.StatusCode >= 300 && e.StatusCode < 400
	case ErrInvalidArgument:
		return e.invalidArgument
	}
	if code, ok := deviceErrorCode(target); ok {
		return e.Code == code
	}
	return false
}

// Permanent reports whether the refresh token or the client will not work
// again until a person acts (reauthenticates, fixes the app, reactivates the
// user): the provider rejected the request with invalid_grant,
// invalid_client, invalid_client_id, unauthorized_client, inactive_user,
// inactive_org or invalid_scope. Rate limits and temporary unavailability are
// not permanent, and neither is anything but OutcomeRejected.
func (e *Error) Permanent() bool {
	if e.Outcome != OutcomeRejected {
		return false
	}
	switch e.Code {
	case "invalid_grant", "inactive_user", "inactive_org", "invalid_scope":
		return true
	}
	return isClientCode(e.Code)
}

func isClientCode(code string) bool {
	switch code {
	case "invalid_client", "invalid_client_id", "unauthorized_client":
		return true
	}
	return false
}

// notProcessedCode reports OAuth error codes that say the provider did not
// handle the request at all, whatever the HTTP status.
func notProcessedCode(code string) bool {
	switch code {
	case "rate_limit_exceeded", "temporarily_unavailable", "slow_down":
		return true
	}
	return false
}

func invalidArgument(op, what string) *Error {
	return &Error{Op: op, Outcome: OutcomeNotProcessed, Description: what, invalidArgument: true}
}

const (
	// maxDescriptionRunes bounds Error.Description: a provider's text is
	// for people, and an unbounded one could flood logs. 512 keeps the
	// longest real ones whole (Keycloak's and Okta's name the client
	// authentication method expected).
	maxDescriptionRunes = 512
	// maxCodeRunes bounds Error.Code; real codes are short identifiers.
	maxCodeRunes = 64
	redactedMark = "[REDACTED]"
)

// sanitize makes provider text safe to put in an error: valid UTF-8, none
// of the secrets the request carried in any spelling (a provider may echo
// the request it refused; see redactor), no control characters (no log
// injection), at most maxRunes runes.
func sanitize(s string, maxRunes int, red *redactor) string {
	s = red.redact(strings.ToValidUTF8(s, "\uFFFD"))
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if utf8.RuneCountInString(s) <= maxRunes {
		return s
	}
	runes := []rune(s)
	return string(runes[:maxRunes-1]) + "…"
}
