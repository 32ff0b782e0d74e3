package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// Reasons of google.rpc.ErrorInfo the CLI explains.
const (
	reasonReauthRequired = "REAUTHENTICATION_REQUIRED"
	reasonCursorExpired  = "CURSOR_EXPIRED"
	reasonTooSlow        = "SUBSCRIBER_TOO_SLOW"
	reasonMinLifetime    = "MIN_LIFETIME_UNATTAINABLE"
)

// printJSON writes m as protobuf JSON on one line.
func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{EmitUnpopulated: false}.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode JSON: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// fields prints aligned "name  value" lines.
type fields struct{ tw *tabwriter.Writer }

func newFields(w io.Writer) *fields {
	return &fields{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
}

func (f *fields) add(name, value string) {
	fmt.Fprintf(f.tw, "%s\t%s\n", name, terminalSafe(value))
}

// terminalSafe replaces control characters (C0, DEL, C1: newlines and
// escape sequences) and invisible format characters (bidirectional
// overrides) with '?'. Values that came from a provider, through the
// server — a token type, an instance URL, a last error — must not rewrite
// the terminal or forge lines of output. The server bounds them too; this
// is where the CLI prints them.
func terminalSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return '?'
		}
		return r
	}, s)
}

// addIf prints the line only when value is not empty.
func (f *fields) addIf(name, value string) {
	if value != "" {
		f.add(name, value)
	}
}

func (f *fields) flush() error { return f.tw.Flush() }

// when shows a time with how far it is from now: "2026-01-02T15:04:05+01:00
// (in 29s)".
func (a *app) when(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	t := ts.AsTime()
	return t.Local().Format(time.RFC3339) + " (" + a.relative(t) + ")"
}

func (a *app) relative(t time.Time) string {
	d := t.Sub(a.now()).Round(time.Second)
	switch {
	case d > 0:
		return "in " + d.String()
	case d < 0:
		return (-d).String() + " ago"
	default:
		return "now"
	}
}

// nextRefreshText shows when a family is refreshed next. A time in the
// past means the scheduler left it alone on purpose — nobody used the
// current access token, so the next caller triggers the refresh — not that
// a refresh is late.
func (a *app) nextRefreshText(ts *timestamppb.Timestamp, long bool) string {
	switch {
	case ts == nil:
		return "-"
	case ts.AsTime().After(a.now()):
		if long {
			return a.when(ts)
		}
		return a.relative(ts.AsTime())
	case long:
		return "on demand: the current access token was not used, so it is refreshed when a caller next asks"
	default:
		return "on demand"
	}
}

// relativeOrDash is relative for a set time, "-" for none.
func (a *app) relativeOrDash(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return a.relative(ts.AsTime())
}

func durationText(d *durationpb.Duration) string {
	if d == nil {
		return ""
	}
	return d.AsDuration().String()
}

func enumText(name, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(name, prefix))
}

func providerText(k rotavaultv1.ProviderKind) string {
	return enumText(k.String(), "PROVIDER_KIND_")
}

func reasonText(r rotavaultv1.RevocationReason) string {
	return enumText(r.String(), "REVOCATION_REASON_")
}

func statusText(c *rotavaultv1.Credential) string {
	switch c.GetStatus() {
	case rotavaultv1.CredentialStatus_CREDENTIAL_STATUS_ACTIVE:
		return "active"
	case rotavaultv1.CredentialStatus_CREDENTIAL_STATUS_REVOKED:
		return "revoked: " + reasonText(c.GetRevocationReason())
	case rotavaultv1.CredentialStatus_CREDENTIAL_STATUS_AWAITING_REAUTHENTICATION:
		return "awaiting reauthentication"
	case rotavaultv1.CredentialStatus_CREDENTIAL_STATUS_UNPROVEN:
		return "unproven: imported, not yet proven by a refresh; retrying"
	default:
		return enumText(c.GetStatus().String(), "CREDENTIAL_STATUS_")
	}
}

// codeName spells a gRPC code as the API documents it: FAILED_PRECONDITION.
func codeName(c codes.Code) string {
	if c == codes.OK {
		return "OK"
	}
	var b strings.Builder
	for i, r := range c.String() {
		if i > 0 && unicode.IsUpper(r) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
}

// grpcStatus finds the gRPC status in err's chain.
func grpcStatus(err error) (*status.Status, bool) {
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return nil, false
	}
	st := se.GRPCStatus()
	return st, st != nil
}

// errorReason returns the ErrorInfo reason of a gRPC error, if any.
func errorReason(st *status.Status) string {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}

// hintedError carries advice for the person who ran the command.
type hintedError struct {
	err  error
	hint string
}

func (e *hintedError) Error() string { return e.err.Error() }
func (e *hintedError) Unwrap() error { return e.err }

func withHint(err error, format string, args ...any) error {
	return &hintedError{err: err, hint: fmt.Sprintf(format, args...)}
}

// formatError renders an error for people:
// "error: <message> (<CODE>[, reason <REASON>])" for gRPC errors, then any
// hint on its own line.
func formatError(err error) string {
	var b strings.Builder
	if st, ok := grpcStatus(err); ok {
		fmt.Fprintf(&b, "error: %s (%s", userMessage(st), codeName(st.Code()))
		for _, d := range st.Details() {
			switch d := d.(type) {
			case *errdetails.ErrorInfo:
				fmt.Fprintf(&b, ", reason %s", d.GetReason())
			case *errdetails.RetryInfo:
				fmt.Fprintf(&b, ", retry in %s", d.GetRetryDelay().AsDuration())
			}
		}
		b.WriteString(")")
	} else {
		fmt.Fprintf(&b, "error: %v", err)
	}
	var h *hintedError
	if errors.As(err, &h) {
		fmt.Fprintf(&b, "\nhint: %s", h.hint)
	}
	return b.String()
}

// explain adds advice to the errors a person can act on.
func (o *clientOptions) explain(err error, credentialID string) error {
	st, ok := grpcStatus(err)
	if !ok {
		return err
	}
	id := credentialID
	if id == "" {
		id = "ID"
	}
	switch reason := errorReason(st); {
	case reason == reasonReauthRequired:
		return withHint(err, "install a new token family: `rotavault reauth device %s` (a code to enter on any device), `rotavault reauth start %s --wait` (a browser, through the server's callback), or `rotavault reauth import %s --refresh-token-file FILE`", id, id, id)
	case st.Code() == codes.AlreadyExists:
		return withHint(err, "change it with `rotavault credentials update %s` (only the flags you give change), or delete it first", id)
	case reason == reasonMinLifetime:
		return withHint(err, "ask for less --min-remaining, or raise the credential's --access-token-lifetime if the provider's tokens live longer")
	case st.Code() == codes.Unavailable && reason == "":
		return withHint(err, "is a Rotavault server running at %s? Start one with `rotavault dev`, or point --server (ROTAVAULT_ADDR) at it", o.server)
	case st.Code() == codes.DeadlineExceeded:
		return withHint(err, "the server did not answer within --timeout %s", o.timeout)
	}
	return err
}

// listAll follows a listing's page tokens to the end and returns every
// item; fetch returns one page.
func listAll[T any](fetch func(pageToken string) (items []T, next string, err error)) ([]T, error) {
	var all []T
	err := eachPage(fetch, func(items []T) error {
		all = append(all, items...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return all, nil
}

// eachPage follows a listing's page tokens to the end, handing each page
// to each as it arrives, so that a long listing prints its first lines
// before the server is asked for the next page. A server that repeats a
// page token ends the listing rather than looping.
func eachPage[T any](fetch func(pageToken string) (items []T, next string, err error), each func(items []T) error) error {
	pageToken := ""
	for range maxListPages {
		items, next, err := fetch(pageToken)
		if err != nil {
			return err
		}
		if err := each(items); err != nil {
			return err
		}
		if next == "" || next == pageToken {
			break
		}
		pageToken = next
	}
	return nil
}

// pagePrinter prints a listing page by page: the header before the first
// row, columns aligned within each page (a page is flushed as soon as it is
// printed), JSON lines with --json, and the empty message if no page held
// anything.
type pagePrinter[T proto.Message] struct {
	w      io.Writer
	json   bool
	header string
	row    func(tw io.Writer, item T)
	rows   int
}

func (p *pagePrinter[T]) page(items []T) error {
	if p.json {
		p.rows += len(items)
		return printJSONLines(p.w, items)
	}
	if len(items) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(p.w, 0, 4, 2, ' ', 0)
	if p.rows == 0 {
		fmt.Fprintln(tw, p.header)
	}
	for _, it := range items {
		p.row(tw, it)
	}
	p.rows += len(items)
	return tw.Flush()
}

// done prints empty when no row was printed (not with --json: no lines is
// the empty listing there).
func (p *pagePrinter[T]) done(empty string) error {
	if p.rows > 0 || p.json {
		return nil
	}
	_, err := fmt.Fprintln(p.w, empty)
	return err
}

// printJSONLines prints one JSON object per line, for scripts.
func printJSONLines[T proto.Message](w io.Writer, items []T) error {
	for _, it := range items {
		if err := printJSON(w, it); err != nil {
			return err
		}
	}
	return nil
}
