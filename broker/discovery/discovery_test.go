package discovery_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/discovery"
	"github.com/rotavault/rotavault/broker/stats"
	"github.com/rotavault/rotavault/provider"
)

// TestIssuerOutageIsUnavailableNotInvalid: a credential naming an issuer
// that cannot be reached now, or answers "try later", is refused as
// unavailable (retry the same call), not as an invalid issuer (change the
// call); an issuer answering 404 everywhere is invalid.
func TestIssuerOutageIsUnavailableNotInvalid(t *testing.T) {
	answering := func(code int) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(code) }))
		t.Cleanup(srv.Close)
		return srv.URL
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String()
	_ = l.Close()

	dy := discovery.New(provider.New(nil), time.Now, &stats.Counters{}, slog.New(slog.DiscardHandler))
	for _, tc := range []struct {
		name, issuer string
		unavailable  bool
	}{
		{"connection refused", closed, true},
		{"HTTP 503", answering(http.StatusServiceUnavailable), true},
		{"HTTP 429", answering(http.StatusTooManyRequests), true},
		{"HTTP 404", answering(http.StatusNotFound), false},
		{"HTTP 403", answering(http.StatusForbidden), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := credspec.Spec{ProviderKind: credspec.ProviderOAuth2, Issuer: tc.issuer, ClientID: "c"}
			err := dy.Into(context.Background(), &spec)
			var ue *brokererr.UnavailableError
			var ie *brokererr.InvalidArgumentError
			switch {
			case tc.unavailable && !(errors.As(err, &ue) && ue.Component == brokererr.ComponentProvider && ue.RetryAfter > 0):
				t.Errorf("Into: %v, want the provider unavailable with a retry delay", err)
			case !tc.unavailable && !errors.As(err, &ie):
				t.Errorf("Into: %v, want an invalid issuer", err)
			}
			if spec.Discovered != nil {
				t.Errorf("a failed discovery left metadata in the spec: %+v", spec.Discovered)
			}
		})
	}
}
