package provider

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"
)

// Device authorization: the user approves on another device while the client
// polls the token endpoint with a device code. Salesforce has a dialect of
// its own (started at its token endpoint with response_type=device_code,
// polled with grant_type=device and code=); every other provider speaks RFC
// 8628.

// deviceGrantType is RFC 8628's grant type for polling.
const deviceGrantType = "urn:ietf:params:oauth:grant-type:device_code"

// Poll answers of RFC 8628 §3.5 (Salesforce uses the same codes). Check them
// with errors.Is on an error of PollDeviceToken.
var (
	// ErrAuthorizationPending: the user has not acted yet; poll again after
	// the interval.
	ErrAuthorizationPending = errors.New("provider: authorization pending")
	// ErrSlowDown: polling too fast; add 5 seconds to the interval (RFC 8628
	// §3.5) and poll again.
	ErrSlowDown = errors.New("provider: slow down")
	// ErrAccessDenied: the user refused. The device code is dead.
	ErrAccessDenied = errors.New("provider: access denied")
	// ErrExpiredToken: the device code expired before the user approved.
	ErrExpiredToken = errors.New("provider: device code expired")
)

// deviceErrorCode maps each poll sentinel to its OAuth error code, for
// (*Error).Is.
func deviceErrorCode(target error) (string, bool) {
	switch target {
	case ErrAuthorizationPending:
		return "authorization_pending", true
	case ErrSlowDown:
		return "slow_down", true
	case ErrAccessDenied:
		return "access_denied", true
	case ErrExpiredToken:
		return "expired_token", true
	}
	return "", false
}

// DeviceAuthorization is a started device flow. DeviceCode is a secret until
// the flow ends: it alone redeems the user's approval. Printing or logging a
// DeviceAuthorization never shows it: String, GoString, Format and LogValue
// redact it. The user code is for the person approving and is shown.
type DeviceAuthorization struct {
	DeviceCode string
	// UserCode is what the user enters at VerificationURI.
	UserCode string
	// VerificationURI is where the user goes (RFC 8628 verification_uri;
	// "verification_url" from servers that spell it so).
	VerificationURI string
	// VerificationURIComplete has the user code filled in; empty when the
	// provider gives none (Salesforce never does).
	VerificationURIComplete string
	// ExpiresIn is the device code's lifetime, 0 when the provider did not
	// say (Salesforce does not).
	ExpiresIn time.Duration
	// Interval is the least time between polls, 0 when the provider did not
	// say (RFC 8628: then 5 seconds).
	Interval time.Duration
}

// String describes the flow without its device code.
func (d DeviceAuthorization) String() string {
	return fmt.Sprintf("DeviceAuthorization{DeviceCode: %s, UserCode: %q, VerificationURI: %q, VerificationURIComplete: %q, ExpiresIn: %s, Interval: %s}",
		redacted(d.DeviceCode), d.UserCode, d.VerificationURI, d.VerificationURIComplete, d.ExpiresIn, d.Interval)
}

// GoString is String, so %#v redacts too.
func (d DeviceAuthorization) GoString() string { return "provider." + d.String() }

// Format makes every fmt verb print the redacted form.
func (d DeviceAuthorization) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		_, _ = fmt.Fprint(f, d.GoString())
		return
	}
	_, _ = fmt.Fprint(f, d.String())
}

// LogValue logs the flow without its device code (nor the user code: only
// the operator should see it).
func (d DeviceAuthorization) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Bool("device_code_set", d.DeviceCode != ""),
		slog.String("verification_uri", d.VerificationURI),
		slog.Duration("expires_in", d.ExpiresIn),
		slog.Duration("interval", d.Interval),
	)
}

// maxDeviceSeconds bounds expires_in and interval: a device flow that lasts
// a day is a misconfigured or hostile server, and the values become
// time.Durations.
const maxDeviceSeconds = 24 * 3600

// maxDeviceCodeLen bounds the device code as a refresh token is bounded.
const maxDeviceCodeLen = maxRefreshTokenLen

// maxUserCodeLen bounds the user code: a person types it (RFC 8628 §6.1
// suggests 8 characters).
const maxUserCodeLen = 64

// StartDeviceAuthorization begins a device flow and returns the codes.
// KindSalesforce posts response_type=device_code to ep.TokenURL; KindOAuth2
// posts to ep.DeviceAuthorizationURL (RFC 8628 §3.1). scopes are sent
// space-separated when any.
//
// Errors are *Error with Op "device_authorization"; a 2xx without
// device_code, user_code and an http(s) verification URI is OutcomeUnknown.
// No error holds the device code or the client secret.
func (c *Client) StartDeviceAuthorization(ctx context.Context, ep Endpoint, cc ClientCredentials, scopes []string) (*DeviceAuthorization, error) {
	const op = "device_authorization"
	form := url.Values{}
	target, name := ep.DeviceAuthorizationURL, "device authorization URL"
	if ep.Kind == KindSalesforce {
		target, name = ep.TokenURL, "token URL"
		form.Set("response_type", "device_code")
	}
	if e := checkCall(op, ep, cc, target, name); e != nil {
		return nil, e
	}
	if len(scopes) > 0 {
		form.Set("scope", strings.Join(scopes, " "))
	}
	res, e := c.post(ctx, op, target, cc, form, []string{cc.ClientSecret})
	if e != nil {
		return nil, e
	}
	obj, e := res.object(c, "device_code")
	if e != nil {
		return nil, e
	}
	d := &DeviceAuthorization{}
	d.DeviceCode, _ = obj.str("device_code")
	// The device code is a secret from here on: no error may echo it.
	res.secrets = append(res.secrets, d.DeviceCode)
	d.UserCode, _ = obj.str("user_code")
	d.VerificationURI, _ = obj.str("verification_uri")
	if d.VerificationURI == "" {
		d.VerificationURI, _ = obj.str("verification_url")
	}
	d.VerificationURIComplete, _ = obj.str("verification_uri_complete")
	if n, ok := obj.integer("expires_in"); ok && n > 0 {
		d.ExpiresIn = time.Duration(min(n, maxDeviceSeconds)) * time.Second
	}
	if n, ok := obj.integer("interval"); ok && n > 0 {
		d.Interval = time.Duration(min(n, maxDeviceSeconds)) * time.Second
	}
	switch {
	case d.DeviceCode == "" || len(d.DeviceCode) > maxDeviceCodeLen || !vschar(d.DeviceCode):
		// A secret of every poll that follows, stored with the flow and
		// searched for in each poll's error text: bounded like a refresh
		// token.
		return nil, res.malformed(fmt.Sprintf("device_code is not 1-%d printable ASCII characters", maxDeviceCodeLen))
	case d.UserCode == "" || len(d.UserCode) > maxUserCodeLen || !printableText(d.UserCode):
		return nil, res.malformed("no printable user_code")
	case !httpURL(d.VerificationURI):
		return nil, res.malformed("no http(s) verification_uri")
	case d.VerificationURIComplete != "" && !httpURL(d.VerificationURIComplete):
		// Optional: a bad one is dropped rather than shown to a person.
		d.VerificationURIComplete = ""
	}
	return d, nil
}

// PollDeviceToken asks ep.TokenURL whether the user approved the device flow
// of deviceCode. KindSalesforce sends grant_type=device with code=; KindOAuth2
// sends RFC 8628's grant type with device_code=. On approval it returns the
// tokens (the Salesforce signature is handled as in Refresh); the device code
// is then spent.
//
// While the user has not acted the error matches ErrAuthorizationPending;
// ErrSlowDown asks for a longer interval; ErrAccessDenied and ErrExpiredToken
// end the flow. Errors are *Error with Op "device_token" and never hold the
// device code.
func (c *Client) PollDeviceToken(ctx context.Context, ep Endpoint, cc ClientCredentials, deviceCode string) (*Token, error) {
	const op = "device_token"
	if deviceCode == "" {
		return nil, invalidArgument(op, "empty device code")
	}
	form := url.Values{"grant_type": {deviceGrantType}, "device_code": {deviceCode}}
	if ep.Kind == KindSalesforce {
		form = url.Values{"grant_type": {"device"}, "code": {deviceCode}}
	}
	return c.token(ctx, op, ep, cc, form, deviceCode)
}

func httpURL(raw string) bool {
	if raw == "" || len(raw) > 2048 || !printableText(raw) {
		return false
	}
	u, err := url.Parse(raw)
	return err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != "" && u.User == nil
}

// printableText refuses control characters: these values are shown to
// people, and must not rewrite a terminal.
func printableText(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}
