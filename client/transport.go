package client

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// Transport is an http.RoundTripper that presents credentialID's access
// token to a resource server, in the Authorization header. When the
// resource server answers 401 it reports the token as rejected (see
// WithRejected) and, if Rotavault hands out a different token and the
// request's body can be sent again (no body, or Request.GetBody set, as
// http.NewRequest does for in-memory bodies), sends the request once more
// with it; never more than once per request, whatever the second answer.
// When the body cannot be replayed the 401 is returned, and the next
// request uses the newer token.
//
// Every request through it carries the token, except a redirect to another
// origin than the first request's — another scheme, host or port, so not
// an https → http downgrade on the same host either, nor a subdomain (which
// http.Client would give an Authorization header): use it for one resource
// server. For Salesforce the request URLs are the consumer's
// to build from the token's instance URL (Client.Token(...).InstanceURL);
// the Transport does not rewrite them.
//
// Errors: those of Client.Token; a 401 for a credential whose family turns
// out to be revoked is a *ReauthenticationRequiredError (the response is
// discarded). Safe for concurrent use; the zero value is not usable: set
// Client and CredentialID.
type Transport struct {
	// Client gets the tokens. Required.
	Client *Client
	// CredentialID names the credential. Required.
	CredentialID string
	// Base sends the requests; nil means http.DefaultTransport. Like
	// http.Transport it must set Response.Request, or redirects are sent
	// without the token.
	Base http.RoundTripper
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	bodyClosed := false
	if req.Body != nil {
		defer func() {
			if !bodyClosed {
				_ = req.Body.Close()
			}
		}()
	}
	if t.Client == nil || t.CredentialID == "" {
		return nil, errors.New("client: Transport needs a Client and a CredentialID")
	}
	if leftOrigin(req) {
		bodyClosed = true
		return t.base().RoundTrip(req)
	}
	ctx := req.Context()
	tok, err := t.Client.Token(ctx, t.CredentialID)
	if err != nil {
		return nil, err
	}
	bodyClosed = true // the base transport closes it from here on
	resp, err := t.base().RoundTrip(withToken(req, tok))
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}

	newer, err := t.Client.Token(ctx, t.CredentialID, WithRejected(tok))
	var reauth *ReauthenticationRequiredError
	switch {
	case errors.As(err, &reauth):
		discard(resp)
		return nil, err
	case err != nil, newer.Fingerprint == tok.Fingerprint:
		// No newer token (the provider still vouches for this one, or the
		// report was refused): the resource server's answer stands.
		return resp, nil
	}
	retry := withToken(req, newer)
	switch {
	case req.Body == nil || req.Body == http.NoBody:
	case req.GetBody == nil:
		return resp, nil
	default:
		body, err := req.GetBody()
		if err != nil {
			return resp, nil
		}
		retry.Body = body
	}
	discard(resp)
	return t.base().RoundTrip(retry)
}

func (t *Transport) base() http.RoundTripper {
	if t.Base != nil {
		return t.Base
	}
	return http.DefaultTransport
}

// leftOrigin reports whether req is a hop of a redirect chain (see
// Request.Response) that went to another origin than the first request's:
// another scheme, host or port. http.Client forwards an Authorization
// header to the same host and its subdomains whatever the scheme, so an
// https → http redirect on the same host would carry the token in clear;
// the token is for one resource server, so it goes to that origin only. A
// chain it cannot follow back counts as having left.
func leftOrigin(req *http.Request) bool {
	if req.URL == nil {
		return false // the base transport refuses it
	}
	var hops []origin
	for r := req; ; r = r.Response.Request {
		hops = append(hops, originOf(r.URL))
		if r.Response == nil {
			break
		}
		if r.Response.Request == nil || r.Response.Request.URL == nil {
			return true
		}
	}
	first := hops[len(hops)-1]
	for _, h := range hops {
		if h != first {
			return true
		}
	}
	return false
}

// origin is a URL's scheme, host and port, the port made explicit.
type origin struct{ scheme, host, port string }

func originOf(u *url.URL) origin {
	o := origin{scheme: strings.ToLower(u.Scheme), host: strings.ToLower(u.Hostname()), port: u.Port()}
	if o.port == "" {
		switch o.scheme {
		case "https":
			o.port = "443"
		case "http":
			o.port = "80"
		}
	}
	return o
}

// withToken is a copy of req presenting tok; req is not modified.
func withToken(req *http.Request, tok Token) *http.Request {
	r := req.Clone(req.Context())
	r.Header.Set("Authorization", tok.AuthorizationHeader())
	return r
}

// discard reads a little of a response we drop, so its connection can be
// reused, and closes it.
func discard(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
	_ = resp.Body.Close()
}
