package fositeserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
)

// maxTokenRequestBytes bounds the buffered token request body; fosite itself
// parses at most 1 MiB of form.
const maxTokenRequestBytes = 1 << 20

// Stats counts what the public token endpoint saw. Requests made by
// IssueRefreshToken are not counted. A request is counted once fosite has
// processed it (its outcome is in fosite's store), just before its answer is
// sent or dropped.
type Stats struct {
	// TokenRequests counts every token-endpoint request, whatever its grant
	// type or outcome.
	TokenRequests int
	// RefreshRequests counts requests with grant_type=refresh_token.
	RefreshRequests int
	// RefreshSuccesses counts refresh requests fosite granted (HTTP 200),
	// including those whose response was then lost: the token rotated.
	RefreshSuccesses int
	// RefreshFailures counts refresh requests fosite refused.
	RefreshFailures int
	// InvalidGrants counts token-endpoint error responses, of any grant type,
	// whose error is invalid_grant.
	InvalidGrants int
	// LostResponses counts responses dropped because of LoseNextResponses.
	LostResponses int
}

// Stats returns a snapshot of the token-endpoint counters. It is safe for
// concurrent use.
func (s *Server) Stats() Stats {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	return s.stats
}

// LoseNextResponses makes the next n requests to the public token endpoint
// be processed fully by fosite (a refresh rotates the token family) and then
// answered by closing the connection without a response. It replaces any
// earlier setting; n <= 0 cancels it. It is safe for concurrent use.
func (s *Server) LoseNextResponses(n int) {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	s.loseNext = max(n, 0)
}

// WaitForTokenRequests blocks until Stats().TokenRequests >= n, that is until
// fosite has processed n token-endpoint requests (their answers may still be
// on the way to the clients). It returns an error wrapping ctx.Err() when
// ctx ends first, or ErrClosed when the server is closed first. It is safe
// for concurrent use.
func (s *Server) WaitForTokenRequests(ctx context.Context, n int) error {
	for {
		s.statsMu.Lock()
		seen := s.stats.TokenRequests
		changed := s.statsChanged
		s.statsMu.Unlock()
		if seen >= n {
			return nil
		}
		select {
		case <-changed:
		case <-s.closed:
			return fmt.Errorf("fositeserver: waiting for %d token requests, saw %d: %w", n, seen, ErrClosed)
		case <-ctx.Done():
			return fmt.Errorf("fositeserver: waiting for %d token requests, saw %d: %w", n, seen, ctx.Err())
		}
	}
}

// Introspections counts requests to the introspection endpoint, whatever
// their answer. It is safe for concurrent use.
func (s *Server) Introspections() int {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	return s.introspections
}

func (s *Server) countIntrospection() {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	s.introspections++
}

// takeLoss reports whether the current request's response is to be lost.
func (s *Server) takeLoss() bool {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	if s.loseNext == 0 {
		return false
	}
	s.loseNext--
	return true
}

func (s *Server) record(grantType string, status int, errorCode string, lost bool) {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	s.stats.TokenRequests++
	if grantType == "refresh_token" {
		s.stats.RefreshRequests++
		if status == http.StatusOK {
			s.stats.RefreshSuccesses++
		} else {
			s.stats.RefreshFailures++
		}
	}
	if errorCode == "invalid_grant" {
		s.stats.InvalidGrants++
	}
	if lost {
		s.stats.LostResponses++
	}
	close(s.statsChanged)
	s.statsChanged = make(chan struct{})
}

// instrumentToken counts token-endpoint requests and drops responses on
// demand. fosite's answer is buffered so that it can be either sent as is or
// never sent at all, after fosite has committed the outcome to its store.
func (s *Server) instrumentToken(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A read error leaves fosite with the truncated body, which it
		// answers with its own error.
		body, _ := io.ReadAll(http.MaxBytesReader(w, r.Body, maxTokenRequestBytes))
		r.Body = io.NopCloser(bytes.NewReader(body))
		grantType := formValue(r.Header.Get("Content-Type"), body, "grant_type")

		lose := s.takeLoss()
		rec := &responseBuffer{header: make(http.Header)}
		next.ServeHTTP(rec, r)

		// Count before answering, so that a client which has its answer, or
		// has lost it, already finds it in Stats.
		var dropped net.Conn
		if lose {
			dropped = s.hijack(w)
		}
		lost := dropped != nil
		code := rec.errorCode()
		if code == "invalid_grant" && s.invalidGrantStatus != 0 {
			rec.status = s.invalidGrantStatus
		}
		s.record(grantType, rec.statusCode(), code, lost)
		s.log.InfoContext(r.Context(), "fositeserver: token request",
			"grant_type", grantType, "status", rec.statusCode(), "error", code, "lost", lost)

		if lost {
			if err := dropped.Close(); err != nil {
				s.log.Debug("fositeserver: closing dropped connection", "error", err)
			}
			return
		}
		rec.writeTo(w)
	})
}

// hijack takes over the client's connection so that it can be closed
// without a response, or returns nil if it cannot.
func (s *Server) hijack(w http.ResponseWriter) net.Conn {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		s.log.Error("fositeserver: cannot drop token response, sending it", "error", err)
		return nil
	}
	return conn
}

// formValue reads one field of a form-encoded body the way fosite will, or
// returns "" for any other body.
func formValue(contentType string, body []byte, key string) string {
	mediaType, _, err := mime.ParseMediaType(contentType)
	if err != nil || mediaType != "application/x-www-form-urlencoded" {
		return ""
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return ""
	}
	return form.Get(key)
}

// responseBuffer is an http.ResponseWriter that holds the whole response.
type responseBuffer struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (b *responseBuffer) Header() http.Header { return b.header }

func (b *responseBuffer) WriteHeader(status int) {
	if b.status == 0 {
		b.status = status
	}
}

func (b *responseBuffer) Write(p []byte) (int, error) {
	b.WriteHeader(http.StatusOK)
	return b.body.Write(p)
}

func (b *responseBuffer) statusCode() int {
	if b.status == 0 {
		return http.StatusOK
	}
	return b.status
}

// errorCode returns the OAuth error code of an error response, or "".
func (b *responseBuffer) errorCode() string {
	if b.statusCode() == http.StatusOK {
		return ""
	}
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(b.body.Bytes(), &e); err != nil {
		return ""
	}
	return e.Error
}

func (b *responseBuffer) writeTo(w http.ResponseWriter) {
	for k, v := range b.header {
		w.Header()[k] = v
	}
	w.WriteHeader(b.statusCode())
	// The client may be gone; nothing is left to do about it.
	_, _ = w.Write(b.body.Bytes())
}
