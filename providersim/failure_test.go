package providersim

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"
)

func TestFailuresBeforeProcessing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		kind       FailureKind
		wantStatus int
		check      func(t *testing.T, res result)
	}{
		{FailUnavailable, http.StatusServiceUnavailable, func(t *testing.T, res result) {
			if len(res.raw) != 0 {
				t.Errorf("body %q, want empty", res.raw)
			}
		}},
		{FailRateLimited, http.StatusTooManyRequests, func(t *testing.T, res result) {
			if got := res.header.Get("Retry-After"); got != "1" {
				t.Errorf("Retry-After = %q, want 1", got)
			}
		}},
		{FailServerError, http.StatusInternalServerError, func(t *testing.T, res result) {
			if res.str("error") == "" {
				t.Errorf("body %s, want a JSON error", res.raw)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.kind.String(), func(t *testing.T) {
			t.Parallel()
			h := setupProviderTest(t, Config{})
			r1 := h.login()
			h.srv.InjectFailure(tc.kind, 2)
			for i := range 2 {
				res := h.refresh(r1)
				if res.status != tc.wantStatus {
					t.Fatalf("request %d: status %d body %s, want %d", i, res.status, res.raw, tc.wantStatus)
				}
				tc.check(t, res)
			}
			// Nothing was processed: the same token still refreshes.
			h.mustRefresh(r1)
			st := h.srv.Stats()
			if st.InjectedFailures != 2 || st.TokenRequests != 3 || st.RefreshRequests != 1 || st.Rotations != 1 {
				t.Errorf("stats = %+v, want 2 injected of 3 requests, 1 processed", st)
			}
		})
	}
}

func TestLoseResponse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		grace time.Duration
		// retryOK: resending the old token after the lost answer succeeds.
		retryOK bool
	}{
		{"Salesforce: the retry costs the family", 0, false},
		{"grace window: the retry is accepted", time.Minute, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := setupProviderTest(t, Config{ReuseGrace: tc.grace})
			r1 := h.login()
			// Warm up a keep-alive connection: net/http must not silently
			// resend the refresh on it when the answer is lost.
			if got := h.apiStatus("warm-up"); got != http.StatusUnauthorized {
				t.Fatalf("warm-up: API %d", got)
			}
			h.srv.InjectFailure(FailLoseResponse, 1)
			if _, err := h.do(t.Context(), http.MethodPost, "/services/oauth2/token", refreshForm(r1), nil); err == nil {
				t.Fatal("want a transport error for a lost response")
			}
			st := h.srv.Stats()
			if st.Rotations != 1 || st.LostResponses != 1 || st.TokenRequests != 1 {
				t.Fatalf("stats = %+v: the refresh must have rotated before the answer was lost", st)
			}
			res := h.refresh(r1)
			if !tc.retryOK {
				assertInvalidGrant(t, res)
				if st := h.srv.Stats(); st.ReuseDetections != 1 || st.FamiliesRevoked != 1 {
					t.Errorf("stats = %+v, want the retry detected as reuse", st)
				}
				return
			}
			if res.status != http.StatusOK || res.str("refresh_token") == "" {
				t.Fatalf("status %d body %s, want a new pair", res.status, res.raw)
			}
			h.mustRefresh(res.str("refresh_token"))
		})
	}
}

func TestHangUntilClientGivesUp(t *testing.T) {
	t.Parallel()
	h := setupProviderTest(t, Config{})
	r1 := h.login()
	h.srv.InjectFailure(FailHang, 1)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := h.do(ctx, http.MethodPost, "/services/oauth2/token", refreshForm(r1), nil)
		done <- err
	}()
	eventually(t, "the hanging refresh to be processed", func() bool { return h.srv.Stats().LostResponses == 1 })
	select {
	case err := <-done:
		t.Fatalf("request returned while the provider hangs: %v", err)
	default:
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if st := h.srv.Stats(); st.Rotations != 1 {
		t.Errorf("Rotations = %d, want 1: the hung refresh was processed", st.Rotations)
	}
	assertInvalidGrant(t, h.refresh(r1))
}

func TestCloseReleasesHangingRequest(t *testing.T) {
	t.Parallel()
	h := setupProviderTest(t, Config{})
	r1 := h.login()
	h.srv.InjectFailure(FailHang, 1)
	done := make(chan error, 1)
	go func() {
		_, err := h.do(context.Background(), http.MethodPost, "/services/oauth2/token", refreshForm(r1), nil)
		done <- err
	}()
	eventually(t, "the refresh to hang", func() bool { return h.srv.Stats().LostResponses == 1 })
	if err := h.srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-done; err == nil {
		t.Fatal("a hung request must end with an error, not an answer, when the server closes")
	}
	if err := h.srv.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestLatency(t *testing.T) {
	t.Parallel()
	t.Run("delays answers", func(t *testing.T) {
		t.Parallel()
		h := setupProviderTest(t, Config{})
		h.srv.SetLatency(30 * time.Millisecond)
		start := time.Now()
		h.mustRefresh(h.login())
		if d := time.Since(start); d < 30*time.Millisecond {
			t.Errorf("answer after %v, want at least the 30ms latency", d)
		}
	})
	t.Run("client giving up leaves the request unprocessed", func(t *testing.T) {
		t.Parallel()
		h := setupProviderTest(t, Config{})
		r1 := h.login()
		h.srv.SetLatency(time.Minute)
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		if _, err := h.do(ctx, http.MethodPost, "/services/oauth2/token", refreshForm(r1), nil); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want deadline exceeded", err)
		}
		h.srv.SetLatency(0)
		h.mustRefresh(r1)
		if st := h.srv.Stats(); st.RefreshRequests != 1 || st.ReuseDetections != 0 {
			t.Errorf("stats = %+v, want only the second refresh processed", st)
		}
	})
}

func TestWaitForTokenRequests(t *testing.T) {
	t.Parallel()
	h := setupProviderTest(t, Config{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := h.srv.WaitForTokenRequests(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}

	waited := make(chan error, 1)
	go func() { waited <- h.srv.WaitForTokenRequests(t.Context(), 2) }()
	r := h.login()
	_, r = h.mustRefresh(r)
	select {
	case err := <-waited:
		t.Fatalf("returned after one request: %v", err)
	default:
	}
	h.mustRefresh(r)
	if err := <-waited; err != nil {
		t.Fatalf("err = %v", err)
	}

	go func() { waited <- h.srv.WaitForTokenRequests(t.Context(), 100) }()
	if err := h.srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
}

func TestInjectFailureRejectsUnknownKind(t *testing.T) {
	t.Parallel()
	h := setupProviderTest(t, Config{})
	defer func() {
		if recover() == nil {
			t.Error("want a panic for an invalid FailureKind")
		}
	}()
	h.srv.InjectFailure(FailureKind(0), 1)
}
