package providersim

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// FailureKind is a way the token endpoint can fail; see InjectFailure.
type FailureKind int

const (
	// FailUnavailable answers 503 with an empty body; the request is not
	// processed.
	FailUnavailable FailureKind = iota + 1
	// FailRateLimited answers 429 with Retry-After: 1 and a
	// rate_limit_exceeded body; the request is not processed.
	FailRateLimited
	// FailServerError answers 500 with a JSON error body; the request is not
	// processed.
	FailServerError
	// FailLoseResponse processes the request fully (a refresh rotates) and
	// then closes the connection without answering: the client sees EOF
	// after sending, the provider has moved on.
	FailLoseResponse
	// FailHang processes the request fully and then holds the connection
	// without answering until the client gives up or the Server closes.
	FailHang
)

func (k FailureKind) String() string {
	switch k {
	case FailUnavailable:
		return "unavailable"
	case FailRateLimited:
		return "rate_limited"
	case FailServerError:
		return "server_error"
	case FailLoseResponse:
		return "lose_response"
	case FailHang:
		return "hang"
	}
	return fmt.Sprintf("FailureKind(%d)", int(k))
}

type injectedFailure struct {
	kind  FailureKind
	count int
}

// InjectFailure makes the next count token-endpoint requests fail as kind,
// after any failures injected before. count <= 0 does nothing. It panics on a
// kind that is not one of the Fail constants, a programming error.
func (s *Server) InjectFailure(kind FailureKind, count int) {
	if kind < FailUnavailable || kind > FailHang {
		panic(fmt.Sprintf("providersim: InjectFailure with invalid kind %d", int(kind)))
	}
	if count <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures = append(s.failures, injectedFailure{kind: kind, count: count})
}

// arriveToken counts an arriving token request, wakes waiters and takes the
// next injected failure (0 if none) and the current latency.
func (s *Server) arriveToken() (FailureKind, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.TokenRequests++
	close(s.arrived)
	s.arrived = make(chan struct{})
	var kind FailureKind
	if len(s.failures) > 0 {
		kind = s.failures[0].kind
		s.failures[0].count--
		if s.failures[0].count == 0 {
			s.failures = s.failures[1:]
		}
		s.stats.InjectedFailures++
	}
	return kind, s.latency
}

// failBeforeProcessing is the answer of a failure that leaves the request
// unprocessed, or false for the other kinds.
func failBeforeProcessing(kind FailureKind) (response, bool) {
	switch kind {
	case FailUnavailable:
		return response{status: http.StatusServiceUnavailable}, true
	case FailRateLimited:
		r := oauthError(http.StatusTooManyRequests, "rate_limit_exceeded", "rate limit exceeded")
		r.header = http.Header{"Retry-After": {"1"}}
		return r, true
	case FailServerError:
		return oauthError(http.StatusInternalServerError, "unknown_error", "retry your request"), true
	}
	return response{}, false
}

// delay waits d unless the request's client gives up or the Server closes
// first; it reports whether the full delay passed.
func (s *Server) delay(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-s.done:
		return false
	}
}

// dropConnection closes the client's connection without writing a response.
func dropConnection(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// Not hijackable (HTTP/2 when embedded): abort the handler, which
		// makes net/http reset the stream or close the connection without an
		// answer.
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}
