package provider

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// maxRetryAfter caps Error.RetryAfter: one odd header must not silence a
// credential for days.
const maxRetryAfter = 24 * time.Hour

// response is a 2xx answer.
type response struct {
	op         string
	statusCode int
	header     http.Header
	body       []byte
	sentAt     time.Time
	secrets    []string
	auth       clientAuth
	// bodyErr is set when the body could not be read whole.
	bodyErr *Error
}

// malformed is the error for a 2xx answer this package cannot use: the
// provider may have acted on the request, so the outcome is unknown.
func (r *response) malformed(what string) *Error {
	return &Error{Op: r.op, Outcome: OutcomeUnknown, StatusCode: r.statusCode, Description: "malformed response: " + what}
}

// clientAuth is how a request carries the client's credentials.
type clientAuth int

const (
	// authPost: client_id and client_secret as form fields
	// (client_secret_post).
	authPost clientAuth = iota
	// authBasic: HTTP Basic with the form-encoded client_id and
	// client_secret (client_secret_basic, RFC 6749 §2.3.1).
	authBasic
)

// post sends form, with the client's credentials as cc.AuthMethod says
// (form fields by default), to endpointURL and returns a 2xx answer, or the classified failure. secrets
// are the values of form that must not appear in an error.
func (c *Client) post(ctx context.Context, op, endpointURL string, cc ClientCredentials, form url.Values, secrets []string) (*response, *Error) {
	return c.send(ctx, op, endpointURL, cc, cc.wire(authPost), form, secrets)
}

// send is post with the client authentication chosen by auth.
func (c *Client) send(ctx context.Context, op, endpointURL string, cc ClientCredentials, auth clientAuth, form url.Values, secrets []string) (*response, *Error) {
	if auth == authPost {
		form.Set("client_id", cc.ClientID)
		if cc.ClientSecret != "" {
			form.Set("client_secret", cc.ClientSecret)
		}
	}

	// wrote records that the whole request was written: from then on the
	// provider may process it even if no answer comes back. net/http reports
	// WroteRequest once the request is in the connection's write buffer,
	// just before the flush, so a flush failure also counts as written:
	// the error errs towards OutcomeUnknown, the safe side.
	var wrote atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err == nil {
				wrote.Store(true)
			}
		},
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpointURL, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, invalidArgument(op, "cannot build request")
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if auth == authBasic {
		req.SetBasicAuth(url.QueryEscape(cc.ClientID), url.QueryEscape(cc.ClientSecret))
	}
	req.Header.Set("User-Agent", c.userAgent)

	sentAt := c.now()
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, transportError(op, newRedactor(secrets).clean(unwrapURLError(err)), wrote.Load())
	}
	defer resp.Body.Close()

	body, readErr := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	tooLarge := len(body) > maxResponseBytes
	if tooLarge {
		body = body[:maxResponseBytes]
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e := c.classify(op, resp.StatusCode, resp.Header, body, readErr, newRedactor(secrets))
		e.ClientAuth = auth.method()
		return nil, e
	}

	res := &response{op: op, statusCode: resp.StatusCode, header: resp.Header, body: body, sentAt: sentAt, secrets: secrets, auth: auth}
	switch {
	case readErr != nil:
		res.bodyErr = res.malformed("body cut short")
		res.bodyErr.Err = newRedactor(secrets).clean(unwrapURLError(readErr))
	case tooLarge:
		res.bodyErr = res.malformed(fmt.Sprintf("body larger than %d bytes", maxResponseBytes))
	}
	return res, nil
}

// object returns the 2xx body as a JSON object, or the error for a body that
// is not one or is an OAuth error object (some servers refuse with 200).
// wanted is the field a usable answer has.
func (r *response) object(c *Client, wanted string) (jsonObject, *Error) {
	if r.bodyErr != nil {
		return nil, r.bodyErr
	}
	obj, ok := decodeObject(r.body)
	if !ok {
		return nil, r.malformed("not a JSON object")
	}
	if code, _ := obj.str("error"); code != "" {
		if _, ok := obj[wanted]; !ok {
			e := c.classify(r.op, r.statusCode, r.header, r.body, nil, newRedactor(r.secrets))
			e.ClientAuth = r.auth.method()
			return nil, e
		}
	}
	return obj, nil
}

// transportError classifies a request that got no HTTP answer; err is
// already cleaned of secrets.
func transportError(op string, err error, wrote bool) *Error {
	e := &Error{Op: op, Err: err}
	if wrote {
		e.Outcome = OutcomeUnknown
		e.Description = "no answer after the request was sent"
	} else {
		e.Outcome = OutcomeNotProcessed
		e.Description = "request not sent"
	}
	return e
}

// unwrapURLError drops *url.Error's "Post <url>:" prefix: the message stays
// short, and a URL with userinfo cannot leak into it.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		return ue.Err
	}
	return err
}

// classify turns a non-2xx answer (or a 2xx error object) into an *Error;
// red blanks the request's secrets in the provider's text.
func (c *Client) classify(op string, status int, header http.Header, body []byte, readErr error, red *redactor) *Error {
	e := &Error{
		Op:         op,
		StatusCode: status,
		RetryAfter: parseRetryAfter(header.Get("Retry-After"), c.now()),
	}
	if readErr != nil {
		e.Err = red.clean(unwrapURLError(readErr))
	}
	// A redirect's body is not the token endpoint's answer (a proxy or a
	// moved endpoint wrote it): its OAuth code must not count.
	if obj, ok := decodeObject(body); ok && (status < 300 || status >= 400) {
		code, _ := obj.str("error")
		e.Code = sanitize(code, maxCodeRunes, red)
		desc, _ := obj.str("error_description")
		e.Description = sanitize(desc, maxDescriptionRunes, red)
	}
	switch {
	case status >= 300 && status < 400:
		e.Outcome = OutcomeRejected
		e.Description = "redirect refused" + redirectTarget(header)
	case notProcessedCode(e.Code):
		e.Outcome = OutcomeNotProcessed
	case status == http.StatusTooManyRequests, status == http.StatusRequestTimeout:
		e.Outcome = OutcomeNotProcessed
	case status == http.StatusServiceUnavailable && readErr == nil && len(bytes.TrimSpace(body)) == 0:
		// An empty 503 comes from a proxy or load balancer that never
		// passed the request on; a 503 with a body might come from the
		// application after it acted.
		e.Outcome = OutcomeNotProcessed
	case status >= 200 && status < 300, status >= 400 && status < 500:
		e.Outcome = OutcomeRejected
	default:
		e.Outcome = OutcomeUnknown
	}
	return e
}

// redirectTarget names where a redirect pointed, scheme and host only: the
// rest of a Location may carry anything.
func redirectTarget(header http.Header) string {
	loc, err := url.Parse(header.Get("Location"))
	if err != nil || loc.Host == "" {
		return ""
	}
	return " (to " + loc.Scheme + "://" + loc.Host + ")"
}

// parseRetryAfter reads Retry-After as delay seconds or an HTTP date;
// 0 when absent, unreadable or past.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		if secs > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter
		}
		d = time.Duration(secs) * time.Second
	} else if at, err := http.ParseTime(v); err == nil {
		d = at.Sub(now)
	}
	return max(0, min(d, maxRetryAfter))
}
