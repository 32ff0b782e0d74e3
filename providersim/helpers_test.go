package providersim

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/poll"
)

const (
	testClientID = "3MVG9rotavault.test"
	// The secret holds characters that need form and Basic encoding.
	testSecret   = "s3cr3t+/=&%"
	testRedirect = "http://127.0.0.1:1/callback?app=rv"
	// testVerifier is an RFC 7636 verifier (43+ unreserved chars, no "~").
	testVerifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
)

func challengeOf(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// harness is a running Server with one registered confidential client, a
// fake clock and an HTTP client that does not follow redirects.
type harness struct {
	t     *testing.T
	srv   *Server
	hc    *http.Client
	clock *fakeclock.Clock
}

func setupProviderTest(t *testing.T, cfg Config) *harness {
	t.Helper()
	clock := fakeclock.New(time.Date(2026, 5, 11, 9, 0, 0, 123e6, time.UTC))
	if cfg.Now == nil {
		cfg.Now = clock.Now
	}
	srv, err := Start(cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	srv.AddClient(Client{ID: testClientID, Secret: testSecret, RedirectURIs: []string{testRedirect}})
	tr := http.DefaultTransport.(*http.Transport).Clone()
	hc := &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return &harness{t: t, srv: srv, hc: hc, clock: clock}
}

type result struct {
	status int
	header http.Header
	raw    []byte
	obj    map[string]any
}

func (r result) str(key string) string {
	s, _ := r.obj[key].(string)
	return s
}

func (h *harness) do(ctx context.Context, method, path string, form url.Values, mutate func(*http.Request)) (result, error) {
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequestWithContext(ctx, method, h.srv.URL()+path, body)
	if err != nil {
		return result{}, err
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if mutate != nil {
		mutate(req)
	}
	resp, err := h.hc.Do(req)
	if err != nil {
		return result{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return result{}, err
	}
	res := result{status: resp.StatusCode, header: resp.Header, raw: raw}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") && len(raw) > 0 && raw[0] == '{' {
		if err := json.Unmarshal(raw, &res.obj); err != nil {
			return result{}, err
		}
	}
	return res, nil
}

func (h *harness) post(path string, form url.Values) result {
	h.t.Helper()
	res, err := h.do(h.t.Context(), http.MethodPost, path, form, nil)
	if err != nil {
		h.t.Fatalf("POST %s: %v", path, err)
	}
	return res
}

func refreshForm(token string) url.Values {
	return url.Values{
		"grant_type":    {"refresh_token"},
		"refresh_token": {token},
		"client_id":     {testClientID},
		"client_secret": {testSecret},
	}
}

func (h *harness) refresh(token string) result {
	h.t.Helper()
	return h.post("/services/oauth2/token", refreshForm(token))
}

// login starts a family as if the user had authorized the app elsewhere.
func (h *harness) login() string {
	h.t.Helper()
	rt, err := h.srv.IssueRefreshToken(testClientID, []string{"api", "refresh_token"})
	if err != nil {
		h.t.Fatalf("IssueRefreshToken: %v", err)
	}
	return rt
}

// mustRefresh refreshes and returns the new access and refresh tokens.
func (h *harness) mustRefresh(token string) (access, refresh string) {
	h.t.Helper()
	res := h.refresh(token)
	if res.status != http.StatusOK {
		h.t.Fatalf("refresh: status %d, body %s", res.status, res.raw)
	}
	return res.str("access_token"), res.str("refresh_token")
}

func (h *harness) apiStatus(access string) int {
	h.t.Helper()
	res, err := h.do(h.t.Context(), http.MethodGet, "/services/data/v62.0/", nil, func(r *http.Request) {
		r.Header.Set("Authorization", "Bearer "+access)
	})
	if err != nil {
		h.t.Fatalf("GET /services/data: %v", err)
	}
	return res.status
}

func assertOAuthError(t *testing.T, res result, status int, code string) {
	t.Helper()
	if res.status != status || res.str("error") != code {
		t.Fatalf("got status %d body %s, want %d error %q", res.status, res.raw, status, code)
	}
}

func assertInvalidGrant(t *testing.T, res result) {
	t.Helper()
	assertOAuthError(t, res, http.StatusBadRequest, "invalid_grant")
	if got := res.str("error_description"); got != "expired access/refresh token" {
		t.Fatalf("error_description = %q, want Salesforce's text", got)
	}
}

// eventually polls cond until it holds or a deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 3*time.Second, what, cond)
}
