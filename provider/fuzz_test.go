package provider

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// FuzzProviderResponse feeds arbitrary token-endpoint answers to the parser
// and the error classifier: no panic, a parsed token always has an access
// token, and no secret sent in the request ever reaches an error message —
// even when the provider echoes it back, mangled.
func FuzzProviderResponse(f *testing.F) {
	const secret = "5Aep861-fuzz-refresh-token"
	f.Add(200, []byte(`{"access_token":"00Dx!a","refresh_token":"5Aep2","instance_url":"https://x.my.salesforce.com","issued_at":"1700000000000","signature":"c2ln","token_type":"Bearer","scope":"api refresh_token"}`))
	f.Add(200, []byte(`{"access_token":"a","expires_in":"3600"}`))
	f.Add(400, []byte(`{"error":"invalid_grant","error_description":"expired access/refresh token"}`))
	f.Add(403, []byte(`{"error":"invalid_grant","error_description":"Unknown or invalid refresh token."}`))
	f.Add(400, []byte(`{"error":"invalid_grant","error_description":"token `+secret+` is dead"}`))
	f.Add(400, []byte(`{"error":"`+secret+`"}`))
	f.Add(400, []byte(`{"error":"invalid_grant","error_description":"5Aep861-fuzz\u0001-refresh-token"}`))
	f.Add(429, []byte(`{"error":"rate_limit_exceeded"}`))
	f.Add(503, []byte{})
	f.Add(500, []byte(`<html>oops</html>`))
	c := New(nil)
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		if status < 100 || status > 599 {
			status = 200
		}
		if status/100 == 2 {
			if obj, ok := decodeObject(body); ok {
				if tok, reason := parseToken(obj, time.Now()); reason == "" && (!visibleASCII(tok.AccessToken) || len(tok.AccessToken) > maxAccessTokenLen || !visibleASCII(tok.TokenType)) {
					t.Fatalf("parsed a token with an access token or type no consumer should get: %q %q", tok.AccessToken, tok.TokenType)
				}
			}
			return
		}
		e := c.classify("refresh", status, http.Header{"Retry-After": {string(body[:min(len(body), 16)])}}, body, nil, newRedactor([]string{secret}))
		if e == nil {
			t.Fatal("an error status produced no error")
		}
		if msg := e.Error(); strings.Contains(msg, secret) {
			t.Fatalf("the secret reached the error message: %q", msg)
		}
		if e.RetryAfter < 0 || e.RetryAfter > 24*time.Hour {
			t.Fatalf("retry after %s", e.RetryAfter)
		}
	})
}
