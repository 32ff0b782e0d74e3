package provider

import (
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Option configures a Client. The set of options is closed: only this
// package implements it.
type Option interface {
	apply(*Client)
}

type optionFunc func(*Client)

func (f optionFunc) apply(c *Client) { f(c) }

// WithClock sets the clock used for Token.IssuedAt when the provider sends
// none and for Retry-After dates. nil keeps time.Now.
func WithClock(now func() time.Time) Option {
	return optionFunc(func(c *Client) {
		if now != nil {
			c.now = now
		}
	})
}

// WithUserAgent sets the User-Agent header of every request. It panics if ua
// is not a valid header value: that is a programming error, and every request
// would otherwise fail.
func WithUserAgent(ua string) Option {
	if ua == "" || strings.ContainsFunc(ua, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		panic(fmt.Sprintf("provider: WithUserAgent: invalid header value %q", ua))
	}
	return optionFunc(func(c *Client) { c.userAgent = ua })
}

// WithTransport wraps the transport requests are sent with (the http.Client's
// own, or http.DefaultTransport's clone New makes): for instrumentation such
// as tracing. The Client's timeout and refusal of redirects still apply. nil
// changes nothing.
func WithTransport(wrap func(http.RoundTripper) http.RoundTripper) Option {
	return optionFunc(func(c *Client) {
		if wrap != nil {
			c.hc.Transport = wrap(c.hc.Transport)
		}
	})
}
