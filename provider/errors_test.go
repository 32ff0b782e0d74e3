package provider_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/provider"
)

func oauthError(status int, code, desc string) http.HandlerFunc {
	return jsonAnswer(status, map[string]string{"error": code, "error_description": desc})
}

func TestRefreshHTTPErrorClassification(t *testing.T) {
	huge := `{"access_token":"a1","pad":"` + strings.Repeat("x", 1<<20) + `"}`
	tests := []struct {
		name         string
		answer       http.HandlerFunc
		outcome      provider.Outcome
		code         string
		invalidGrant bool
		invalidCli   bool
		permanent    bool
		retryAfter   time.Duration
	}{
		{name: "400 invalid_grant (Salesforce)", answer: oauthError(400, "invalid_grant", "expired access/refresh token"),
			outcome: provider.OutcomeRejected, code: "invalid_grant", invalidGrant: true, permanent: true},
		{name: "403 invalid_grant (Auth0 reuse)", answer: oauthError(403, "invalid_grant", "Unknown or invalid refresh token."),
			outcome: provider.OutcomeRejected, code: "invalid_grant", invalidGrant: true, permanent: true},
		{name: "401 invalid_client", answer: oauthError(401, "invalid_client", "invalid client credentials"),
			outcome: provider.OutcomeRejected, code: "invalid_client", invalidCli: true, permanent: true},
		{name: "400 invalid_client_id (Salesforce)", answer: oauthError(400, "invalid_client_id", "client identifier invalid"),
			outcome: provider.OutcomeRejected, code: "invalid_client_id", invalidCli: true, permanent: true},
		{name: "400 unauthorized_client", answer: oauthError(400, "unauthorized_client", ""),
			outcome: provider.OutcomeRejected, code: "unauthorized_client", invalidCli: true, permanent: true},
		{name: "400 inactive_user", answer: oauthError(400, "inactive_user", "user is inactive"),
			outcome: provider.OutcomeRejected, code: "inactive_user", permanent: true},
		{name: "400 inactive_org", answer: oauthError(400, "inactive_org", ""),
			outcome: provider.OutcomeRejected, code: "inactive_org", permanent: true},
		{name: "400 invalid_scope", answer: oauthError(400, "invalid_scope", ""),
			outcome: provider.OutcomeRejected, code: "invalid_scope", permanent: true},
		{name: "400 invalid_request is a refusal a person need not fix", answer: oauthError(400, "invalid_request", "missing parameter"),
			outcome: provider.OutcomeRejected, code: "invalid_request"},
		{name: "400 rate_limit_exceeded (Salesforce)", answer: oauthError(400, "rate_limit_exceeded", "rate limit exceeded"),
			outcome: provider.OutcomeNotProcessed, code: "rate_limit_exceeded"},
		{name: "503 temporarily_unavailable", answer: oauthError(503, "temporarily_unavailable", ""),
			outcome: provider.OutcomeNotProcessed, code: "temporarily_unavailable"},
		{name: "429 with Retry-After seconds", answer: rawAnswer(429, http.Header{"Retry-After": {"7"}}, ""),
			outcome: provider.OutcomeNotProcessed, retryAfter: 7 * time.Second},
		{name: "429 with Retry-After date", answer: rawAnswer(429, http.Header{"Retry-After": {fixedNow.Add(90 * time.Second).Format(http.TimeFormat)}}, "slow down"),
			outcome: provider.OutcomeNotProcessed, retryAfter: 90 * time.Second},
		{name: "408 request timeout", answer: rawAnswer(408, nil, ""), outcome: provider.OutcomeNotProcessed},
		{name: "503 empty body", answer: rawAnswer(503, http.Header{"Retry-After": {"2"}}, ""),
			outcome: provider.OutcomeNotProcessed, retryAfter: 2 * time.Second},
		{name: "503 with a body may come from the application", answer: rawAnswer(503, nil, "<html>down</html>"),
			outcome: provider.OutcomeUnknown},
		{name: "500 server_error", answer: oauthError(500, "server_error", "internal"),
			outcome: provider.OutcomeUnknown, code: "server_error"},
		{name: "500 invalid_grant is not trusted as a refusal", answer: oauthError(500, "invalid_grant", ""),
			outcome: provider.OutcomeUnknown, code: "invalid_grant"},
		{name: "502 bad gateway", answer: rawAnswer(502, nil, "bad gateway"), outcome: provider.OutcomeUnknown},
		{name: "504 gateway timeout", answer: rawAnswer(504, nil, ""), outcome: provider.OutcomeUnknown},
		{name: "404 HTML page", answer: rawAnswer(404, nil, "<html>not found</html>"), outcome: provider.OutcomeRejected},
		{name: "400 error as object", answer: jsonAnswer(400, map[string]any{"error": map[string]string{"code": "x"}}), outcome: provider.OutcomeRejected},
		{name: "200 not JSON", answer: rawAnswer(200, nil, "<html>login</html>"), outcome: provider.OutcomeUnknown},
		{name: "200 empty body", answer: rawAnswer(200, nil, ""), outcome: provider.OutcomeUnknown},
		{name: "200 truncated JSON", answer: rawAnswer(200, nil, `{"access_token":"a1","refresh_token":"r`), outcome: provider.OutcomeUnknown},
		{name: "200 JSON array", answer: rawAnswer(200, nil, `[{"access_token":"a1"}]`), outcome: provider.OutcomeUnknown},
		{name: "200 without access_token", answer: jsonAnswer(200, map[string]string{"refresh_token": "r2"}), outcome: provider.OutcomeUnknown},
		{name: "200 with empty access_token", answer: jsonAnswer(200, map[string]string{"access_token": ""}), outcome: provider.OutcomeUnknown},
		{name: "200 carrying an OAuth error (GitHub style)", answer: oauthError(200, "invalid_grant", "bad refresh token"),
			outcome: provider.OutcomeRejected, code: "invalid_grant", invalidGrant: true, permanent: true},
		{name: "200 body over 1 MiB", answer: rawAnswer(200, nil, huge), outcome: provider.OutcomeUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, srv := startFake(t, tt.answer)
			c := provider.New(nil, provider.WithClock(fixedClock))
			tok, err := c.Refresh(context.Background(), oauth2Endpoint(srv.URL), testCreds, testRefreshToken)
			if tok != nil {
				t.Errorf("got a token %v with the error", tok)
			}
			pe := asProviderError(t, err)
			if pe.Op != "refresh" {
				t.Errorf("Op = %q, want refresh", pe.Op)
			}
			if pe.Outcome != tt.outcome {
				t.Errorf("Outcome = %v, want %v (%v)", pe.Outcome, tt.outcome, err)
			}
			if pe.StatusCode == 0 {
				t.Errorf("StatusCode = 0, want the HTTP status")
			}
			if pe.Code != tt.code {
				t.Errorf("Code = %q, want %q", pe.Code, tt.code)
			}
			if got := errors.Is(err, provider.ErrInvalidGrant); got != tt.invalidGrant {
				t.Errorf("errors.Is(ErrInvalidGrant) = %v, want %v", got, tt.invalidGrant)
			}
			if got := errors.Is(err, provider.ErrInvalidClient); got != tt.invalidCli {
				t.Errorf("errors.Is(ErrInvalidClient) = %v, want %v", got, tt.invalidCli)
			}
			if got := pe.Permanent(); got != tt.permanent {
				t.Errorf("Permanent() = %v, want %v", got, tt.permanent)
			}
			if pe.RetryAfter != tt.retryAfter {
				t.Errorf("RetryAfter = %v, want %v", pe.RetryAfter, tt.retryAfter)
			}
			if errors.Is(err, provider.ErrRedirect) || errors.Is(err, provider.ErrInvalidArgument) {
				t.Errorf("error %v matches ErrRedirect or ErrInvalidArgument", err)
			}
		})
	}
}

func TestErrorMessage(t *testing.T) {
	_, srv := startFake(t, oauthError(400, "invalid_grant", "expired access/refresh token"))
	_, err := provider.New(nil).Refresh(context.Background(), oauth2Endpoint(srv.URL), testCreds, testRefreshToken)
	const want = "provider: refresh: invalid_grant (HTTP 400): expired access/refresh token"
	if err == nil || err.Error() != want {
		t.Errorf("Error() = %v, want %q", err, want)
	}
}

// A listener that is closed refuses the dial: nothing was sent.
func closedPortURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return "http://" + addr
}

func TestRefreshTransportClassification(t *testing.T) {
	tests := []struct {
		name    string
		baseURL func(t *testing.T) string
		outcome provider.Outcome
		status  int
	}{
		{
			name:    "dial refused: not processed",
			baseURL: closedPortURL,
			outcome: provider.OutcomeNotProcessed,
		},
		{
			name: "connection closed after the whole request was read: unknown",
			baseURL: func(t *testing.T) string {
				return startRawServer(t, func(conn net.Conn) {
					defer conn.Close()
					_ = readWholeRequest(conn)
				})
			},
			outcome: provider.OutcomeUnknown,
		},
		{
			name: "connection reset after the whole request was read: unknown",
			baseURL: func(t *testing.T) string {
				return startRawServer(t, func(conn net.Conn) {
					defer conn.Close()
					_ = readWholeRequest(conn)
					_ = conn.(*net.TCPConn).SetLinger(0) // close sends RST
				})
			},
			outcome: provider.OutcomeUnknown,
		},
		{
			name: "200 body cut short: unknown",
			baseURL: func(t *testing.T) string {
				return startRawServer(t, func(conn net.Conn) {
					defer conn.Close()
					if readWholeRequest(conn) != nil {
						return
					}
					_, _ = fmt.Fprint(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"access_token\":\"a1\",")
				})
			},
			outcome: provider.OutcomeUnknown,
			status:  200,
		},
		{
			name: "garbage instead of HTTP: unknown",
			baseURL: func(t *testing.T) string {
				return startRawServer(t, func(conn net.Conn) {
					defer conn.Close()
					if readWholeRequest(conn) != nil {
						return
					}
					_, _ = fmt.Fprint(conn, "SSH-2.0-OpenSSH_9.6\r\n")
				})
			},
			outcome: provider.OutcomeUnknown,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := provider.New(nil).Refresh(ctx, oauth2Endpoint(tt.baseURL(t)), testCreds, testRefreshToken)
			pe := asProviderError(t, err)
			if pe.Outcome != tt.outcome {
				t.Errorf("Outcome = %v, want %v (%v)", pe.Outcome, tt.outcome, err)
			}
			if pe.StatusCode != tt.status {
				t.Errorf("StatusCode = %d, want %d", pe.StatusCode, tt.status)
			}
			if pe.Err == nil {
				t.Errorf("Err = nil, want the transport error")
			}
			if pe.Permanent() {
				t.Errorf("Permanent() = true for a transport failure")
			}
		})
	}
}

// hangingServer reads requests and never answers until the client goes away.
func hangingServer(t *testing.T) (url string, requests *atomic.Int32) {
	t.Helper()
	requests = new(atomic.Int32)
	_, srv := startFake(t, func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		<-r.Context().Done()
	})
	return srv.URL, requests
}

func TestRefreshDeadlineWhileWaitingForAnswer(t *testing.T) {
	base, requests := hangingServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := provider.New(nil).Refresh(ctx, oauth2Endpoint(base), testCreds, testRefreshToken)
	pe := asProviderError(t, err)
	if pe.Outcome != provider.OutcomeUnknown {
		t.Errorf("Outcome = %v, want unknown: the provider received the refresh (%v)", pe.Outcome, err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("errors.Is(err, context.DeadlineExceeded) = false for %v", err)
	}
	if requests.Load() != 1 {
		t.Errorf("server saw %d requests, want 1", requests.Load())
	}
}

func TestRefreshHTTPClientTimeoutWhileWaitingForAnswer(t *testing.T) {
	base, _ := hangingServer(t)
	c := provider.New(&http.Client{Timeout: 200 * time.Millisecond})
	_, err := c.Refresh(context.Background(), oauth2Endpoint(base), testCreds, testRefreshToken)
	pe := asProviderError(t, err)
	if pe.Outcome != provider.OutcomeUnknown {
		t.Errorf("Outcome = %v, want unknown (%v)", pe.Outcome, err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("error %v is not a timeout net.Error", err)
	}
}

func TestRefreshCanceledBeforeSending(t *testing.T) {
	f, srv := startFake(t, jsonAnswer(200, map[string]string{"access_token": "a1"}))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := provider.New(nil).Refresh(ctx, oauth2Endpoint(srv.URL), testCreds, testRefreshToken)
	pe := asProviderError(t, err)
	if pe.Outcome != provider.OutcomeNotProcessed {
		t.Errorf("Outcome = %v, want not processed (%v)", pe.Outcome, err)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("errors.Is(err, context.Canceled) = false for %v", err)
	}
	if n := len(f.seen()); n != 0 {
		t.Errorf("server saw %d requests, want 0", n)
	}
}

func TestRedirectRefused(t *testing.T) {
	var followed atomic.Int32
	target, targetSrv := startFake(t, func(w http.ResponseWriter, r *http.Request) {
		followed.Add(1)
		jsonAnswer(200, map[string]string{"access_token": "a1"})(w, r)
	})
	_ = target
	for _, status := range []int{301, 302, 303, 307, 308} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			// The body of a redirect is not an OAuth answer, whatever it
			// says: an invalid_grant in it must not end the family.
			_, srv := startFake(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Location", targetSrv.URL+"/token?x=secret-ish")
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(status)
				_, _ = w.Write([]byte(`{"error":"invalid_grant","error_description":"moved"}`))
			})
			// A caller's client that would follow redirects must not.
			callerClient := &http.Client{}
			_, err := provider.New(callerClient).Refresh(context.Background(), oauth2Endpoint(srv.URL), testCreds, testRefreshToken)
			pe := asProviderError(t, err)
			if !errors.Is(err, provider.ErrRedirect) {
				t.Errorf("errors.Is(err, ErrRedirect) = false for %v", err)
			}
			if errors.Is(err, provider.ErrInvalidGrant) {
				t.Errorf("errors.Is(err, ErrInvalidGrant) = true for a redirect: %v", err)
			}
			if pe.StatusCode != status || pe.Outcome != provider.OutcomeRejected || pe.Permanent() {
				t.Errorf("got status %d outcome %v permanent %v, want %d rejected not permanent", pe.StatusCode, pe.Outcome, pe.Permanent(), status)
			}
			if strings.Contains(err.Error(), "secret-ish") {
				t.Errorf("error %q shows the redirect's query", err)
			}
			if callerClient.CheckRedirect != nil {
				t.Errorf("New modified the caller's http.Client")
			}
		})
	}
	if n := followed.Load(); n != 0 {
		t.Errorf("redirect target got %d requests, want 0", n)
	}
}

// A provider may echo what it refused; the error must hide every secret the
// request carried.
func TestNoSecretsInErrors(t *testing.T) {
	echo := "refused " + strings.Join(testSecrets, " ")
	answers := map[string]http.HandlerFunc{
		"description echoes the secrets": oauthError(400, "invalid_grant", echo),
		"code echoes a secret":           oauthError(400, "bad "+echo, echo),
		"5xx body is only secrets":       rawAnswer(500, nil, echo),
		"200 with secrets but no token":  jsonAnswer(200, map[string]string{"note": echo}),
		"redirect to a secret":           rawAnswer(302, http.Header{"Location": {"https://evil.example/" + testCode + "?c=" + testClientSecret}}, ""),
	}
	c := provider.New(nil)
	ctx := context.Background()
	ops := []struct {
		name string
		sent []string
		call func(ep provider.Endpoint) error
	}{
		{"refresh", []string{testRefreshToken, testClientSecret}, func(ep provider.Endpoint) error {
			_, err := c.Refresh(ctx, ep, testCreds, testRefreshToken)
			return err
		}},
		{"exchange", []string{testCode, testVerifier, testClientSecret}, func(ep provider.Endpoint) error {
			_, err := c.ExchangeCode(ctx, ep, testCreds, testCode, "https://app.example/cb", testVerifier)
			return err
		}},
		{"revoke", []string{testRefreshToken, testClientSecret}, func(ep provider.Endpoint) error {
			return c.Revoke(ctx, ep, testCreds, testRefreshToken)
		}},
		{"introspect", []string{testAccessToken, testClientSecret}, func(ep provider.Endpoint) error {
			_, err := c.Introspect(ctx, ep, testCreds, testAccessToken)
			return err
		}},
	}
	for name, answer := range answers {
		for _, op := range ops {
			t.Run(name+"/"+op.name, func(t *testing.T) {
				_, srv := startFake(t, answer)
				err := op.call(oauth2Endpoint(srv.URL))
				if err == nil {
					if op.name == "revoke" && name == "200 with secrets but no token" {
						return // any 2xx revokes
					}
					t.Fatal("want an error")
				}
				assertNoSecrets(t, err, op.sent)
			})
		}
	}
	t.Run("transport error", func(t *testing.T) {
		_, err := c.Refresh(ctx, oauth2Endpoint(closedPortURL(t)), testCreds, testRefreshToken)
		assertNoSecrets(t, err, testSecrets)
	})
}

func assertNoSecrets(t *testing.T, err error, secrets []string) {
	t.Helper()
	pe := asProviderError(t, err)
	texts := []string{err.Error(), fmt.Sprintf("%v", err), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err), pe.Description, pe.Code}
	for _, text := range texts {
		for _, secret := range secrets {
			if strings.Contains(text, secret) {
				t.Errorf("error text %q contains secret %q", text, secret)
			}
		}
	}
}

func TestErrorDescriptionCleaned(t *testing.T) {
	long := "line1\nline2\r\x1b[31m" + strings.Repeat("é", 1000)
	_, srv := startFake(t, oauthError(400, "invalid_grant", long))
	_, err := provider.New(nil).Refresh(context.Background(), oauth2Endpoint(srv.URL), testCreds, testRefreshToken)
	pe := asProviderError(t, err)
	if n := len([]rune(pe.Description)); n > 512 {
		t.Errorf("Description has %d runes, want at most 512", n)
	}
	if strings.ContainsAny(pe.Error(), "\n\r\x1b") {
		t.Errorf("Error() %q holds control characters", pe.Error())
	}
	if !strings.HasPrefix(pe.Description, "line1 line2") {
		t.Errorf("Description = %q, want the provider's text with control characters replaced", pe.Description)
	}
}

// Summary is what may go where text can never be removed (the audit
// trail): the OAuth code when it looks like one, no provider text.
func TestSummaryCarriesNoProviderText(t *testing.T) {
	tests := []struct {
		answer http.HandlerFunc
		want   string
	}{
		{oauthError(400, "invalid_grant", "token "+testRefreshToken+" reused by 10.0.0.1"), "provider: refresh: invalid_grant (HTTP 400)"},
		{oauthError(400, "Invalid Grant: see https://attacker.example", "x"), "provider: refresh: nonstandard error code (HTTP 400)"},
		{rawAnswer(502, nil, "<html>bad gateway</html>"), "provider: refresh: HTTP 502"},
	}
	for _, tt := range tests {
		_, srv := startFake(t, tt.answer)
		_, err := provider.New(nil).Refresh(context.Background(), oauth2Endpoint(srv.URL), testCreds, testRefreshToken)
		var pe *provider.Error
		if !errors.As(err, &pe) {
			t.Fatalf("got %v, want *provider.Error", err)
		}
		if got := pe.Summary(); got != tt.want {
			t.Errorf("Summary() = %q, want %q (Error() = %q)", got, tt.want, pe.Error())
		}
	}
}
