package provider_test

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"

	"github.com/rotavault/rotavault/provider"
)

// Values used in requests; no error string may contain any of them.
const (
	testRefreshToken = "rt-5ecret-refresh-0001"
	testAccessToken  = "at-5ecret-access-0001"
	testClientSecret = "cs-5ecret-client-0001"
	testCode         = "code-5ecret-0001"
	testVerifier     = "verifier-5ecret-0001-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	testClientID     = "client-id-1"
)

var testSecrets = []string{testRefreshToken, testAccessToken, testClientSecret, testCode, testVerifier}

var testCreds = provider.ClientCredentials{ClientID: testClientID, ClientSecret: testClientSecret}

// oauth2Endpoint returns generic endpoints under base.
func oauth2Endpoint(base string) provider.Endpoint {
	return provider.Endpoint{
		Kind:             provider.KindOAuth2,
		TokenURL:         base + "/token",
		AuthorizeURL:     base + "/authorize",
		RevocationURL:    base + "/revoke",
		IntrospectionURL: base + "/introspect",
	}
}

// recorded is one request a test server saw.
type recorded struct {
	method string
	path   string
	header http.Header
	form   url.Values
}

// fakeProvider serves one canned answer on every path and records requests.
type fakeProvider struct {
	mu       sync.Mutex
	requests []recorded
	answer   http.HandlerFunc
}

func startFake(t *testing.T, answer http.HandlerFunc) (*fakeProvider, *httptest.Server) {
	t.Helper()
	f := &fakeProvider{answer: answer}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			http.Error(w, "bad form", http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		f.requests = append(f.requests, recorded{method: r.Method, path: r.URL.Path, header: r.Header.Clone(), form: r.PostForm})
		f.mu.Unlock()
		f.answer(w, r)
	}))
	t.Cleanup(srv.Close)
	return f, srv
}

func (f *fakeProvider) seen() []recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recorded(nil), f.requests...)
}

// jsonAnswer answers status with v encoded as JSON.
func jsonAnswer(status int, v any) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
}

// rawAnswer answers status with body as is.
func rawAnswer(status int, header http.Header, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		for k, v := range header {
			w.Header()[k] = v
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

// startRawServer runs serve on every accepted connection; serve owns and
// closes the connection. Cleanup closes the listener and waits for serve.
func startRawServer(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				serve(conn)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	return "http://" + ln.Addr().String()
}

// readWholeRequest reads one HTTP request, body included, from conn: after
// it returns the client has certainly finished writing.
func readWholeRequest(conn net.Conn) error {
	req, err := http.ReadRequest(bufio.NewReader(conn))
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, req.Body)
	return err
}

// salesforceSignature is what Salesforce sends: base64(HMAC-SHA256(secret, id+issued_at)).
func salesforceSignature(secret, id, issuedAt string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(id + issuedAt))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// asProviderError fails the test unless err is a *provider.Error.
func asProviderError(t *testing.T, err error) *provider.Error {
	t.Helper()
	if err == nil {
		t.Fatal("got nil error, want *provider.Error")
	}
	var pe *provider.Error
	if !errors.As(err, &pe) {
		t.Fatalf("got %T (%v), want *provider.Error", err, err)
	}
	return pe
}
