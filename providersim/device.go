package providersim

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Device authorization. Salesforce's own dialect starts at the token
// endpoint (response_type=device_code) and polls with grant_type=device and
// code=<device code>; the RFC 8628 dialect starts at /oauth2/device_authorization
// and polls with urn:ietf:params:oauth:grant-type:device_code and
// device_code=. A flow is polled in the dialect it was started in.
//
// Unverified against production: Salesforce's answer to a poll with an
// expired device code. The simulator answers invalid_grant there (its answer
// for every dead grant) and expired_token in the RFC 8628 dialect.

const (
	// DeviceAuthorizationPath is the RFC 8628 device authorization endpoint.
	DeviceAuthorizationPath = "/oauth2/device_authorization"
	// VerificationPath is the page where a user enters a user code, as
	// Salesforce's /setup/connect.
	VerificationPath = "/setup/connect"

	rfc8628GrantType = "urn:ietf:params:oauth:grant-type:device_code"
	// defaultDeviceCodeLifetime is how long a device flow waits for the user.
	defaultDeviceCodeLifetime = 10 * time.Minute
	// defaultDeviceInterval is Salesforce's (and RFC 8628's default) polling
	// interval.
	defaultDeviceInterval = 5 * time.Second
	// userCodeAlphabet has no vowels and no look-alikes (RFC 8628 §6.1).
	userCodeAlphabet = "BCDFGHJKLMNPQRSTVWXZ"
)

// ErrUnknownUserCode: no pending device flow has this user code (never
// issued, expired, already approved or denied).
var ErrUnknownUserCode = errors.New("providersim: unknown or finished user code")

type deviceStatus int

const (
	devicePending deviceStatus = iota
	deviceApproved
	deviceDenied
	deviceRedeemed
)

// deviceFlow is one started device authorization, stored under the digest
// of its device code.
type deviceFlow struct {
	clientID  string
	scopes    []string
	userCode  string
	rfc8628   bool
	expiresAt time.Time
	interval  time.Duration
	status    deviceStatus
	// lastPoll is the real (monotonic) time of the last poll: pacing is
	// about the client's timers, whatever clock the simulator runs on.
	lastPoll time.Time
}

// deviceBody is the device authorization answer. Salesforce's carries no
// expires_in and no verification_uri_complete.
type deviceBody struct {
	DeviceCode              string `json:"device_code"`
	UserCode                string `json:"user_code"`
	VerificationURI         string `json:"verification_uri"`
	VerificationURIComplete string `json:"verification_uri_complete,omitempty"`
	ExpiresIn               int64  `json:"expires_in,omitempty"`
	Interval                int64  `json:"interval"`
}

func (s *Server) deviceCodeLifetime() time.Duration {
	if s.cfg.DeviceCodeLifetime > 0 {
		return s.cfg.DeviceCodeLifetime
	}
	return defaultDeviceCodeLifetime
}

func (s *Server) deviceInterval() time.Duration {
	if s.cfg.DeviceInterval > 0 {
		return s.cfg.DeviceInterval
	}
	return defaultDeviceInterval
}

// handleDeviceAuthorization is the RFC 8628 device authorization endpoint.
func (s *Server) handleDeviceAuthorization(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		s.answer(w, r, oauthError(http.StatusBadRequest, "invalid_request", "malformed or oversized request body"))
		return
	}
	s.answer(w, r, s.deviceStart(r, true))
}

// deviceStart begins a device flow. r.ParseForm must have run.
func (s *Server) deviceStart(r *http.Request, rfc8628 bool) response {
	creds := readClientCreds(r)
	scopes := parseScopes(r.PostForm.Get("scope"))
	if len(scopes) == 0 {
		scopes = defaultScopes
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, errResp, ok := s.authClientLocked(creds, false)
	if !ok {
		return errResp
	}
	if s.devices == nil {
		s.devices = make(map[tokenKey]*deviceFlow)
	}
	code := newDeviceCodeValue()
	s.secrets = append(s.secrets, code)
	d := &deviceFlow{
		clientID:  c.ID,
		scopes:    scopes,
		userCode:  s.newUserCodeLocked(),
		rfc8628:   rfc8628,
		expiresAt: s.now().Add(s.deviceCodeLifetime()),
		interval:  s.deviceInterval(),
	}
	s.devices[keyOf(code)] = d
	s.stats.DeviceAuthorizations++
	s.log.Info("providersim: device flow started", "client_id", c.ID, "rfc8628", rfc8628)
	body := deviceBody{
		DeviceCode:      code,
		UserCode:        d.userCode,
		VerificationURI: s.url + VerificationPath,
		Interval:        int64((d.interval + time.Second - 1) / time.Second),
	}
	if rfc8628 {
		body.VerificationURIComplete = body.VerificationURI + "?user_code=" + url.QueryEscape(d.userCode)
		body.ExpiresIn = int64(s.deviceCodeLifetime() / time.Second)
	}
	return jsonResponse(http.StatusOK, body)
}

// deviceGrant answers a poll. r.ParseForm must have run.
func (s *Server) deviceGrant(r *http.Request, rfc8628 bool) response {
	creds := readClientCreds(r)
	code := r.PostForm.Get("code")
	if rfc8628 {
		code = r.PostForm.Get("device_code")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, errResp, ok := s.authClientLocked(creds, false)
	if !ok {
		return errResp
	}
	s.stats.DevicePolls++
	d, found := s.devices[keyOf(code)]
	if !found || d.clientID != c.ID || d.rfc8628 != rfc8628 || d.status == deviceRedeemed {
		return oauthError(http.StatusBadRequest, "invalid_grant", "invalid device code")
	}
	now := s.now()
	if !now.Before(d.expiresAt) && d.status != deviceDenied {
		if rfc8628 {
			return oauthError(http.StatusBadRequest, "expired_token", "device code expired")
		}
		return oauthError(http.StatusBadRequest, "invalid_grant", "expired device code")
	}
	polled := time.Now()
	tooSoon := !d.lastPoll.IsZero() && polled.Sub(d.lastPoll) < d.interval
	d.lastPoll = polled
	if s.deviceSlowDowns > 0 || tooSoon {
		if s.deviceSlowDowns > 0 {
			s.deviceSlowDowns--
		}
		s.stats.DeviceSlowDowns++
		return oauthError(http.StatusBadRequest, "slow_down", "polling too frequently")
	}
	switch d.status {
	case devicePending:
		return oauthError(http.StatusBadRequest, "authorization_pending", "authorization pending")
	case deviceDenied:
		return oauthError(http.StatusBadRequest, "access_denied", "end-user denied authorization")
	}
	d.status = deviceRedeemed
	f, refresh := s.newFamilyLocked(c.ID, d.scopes)
	access := s.issueAccessLocked(f, now)
	s.stats.DeviceTokenExchanges++
	s.log.Info("providersim: device code exchanged", "family", f.id, "client_id", c.ID, "refresh_token_issued", refresh != "")
	return s.tokenResponseLocked(c, f, access, refresh, now)
}

// newUserCodeLocked returns an unused user code like "BDFG-HJKL". s.mu must
// be held.
func (s *Server) newUserCodeLocked() string {
	for {
		var b [8]byte
		_, _ = rand.Read(b[:])
		var sb strings.Builder
		for i, x := range b {
			if i == 4 {
				sb.WriteByte('-')
			}
			sb.WriteByte(userCodeAlphabet[int(x)%len(userCodeAlphabet)])
		}
		code := sb.String()
		if s.pendingDeviceLocked(code) == nil {
			return code
		}
	}
}

// pendingDeviceLocked finds the pending, unexpired flow of a user code.
// s.mu must be held.
func (s *Server) pendingDeviceLocked(userCode string) *deviceFlow {
	userCode = normalizeUserCode(userCode)
	now := s.now()
	for _, d := range s.devices {
		if d.userCode == userCode && d.status == devicePending && now.Before(d.expiresAt) {
			return d
		}
	}
	return nil
}

// normalizeUserCode accepts what people type: lower case, no dash, spaces.
func normalizeUserCode(raw string) string {
	var sb strings.Builder
	for _, r := range strings.ToUpper(raw) {
		if r >= 'A' && r <= 'Z' {
			sb.WriteRune(r)
		}
	}
	s := sb.String()
	if len(s) != 8 {
		return s
	}
	return s[:4] + "-" + s[4:]
}

// ApproveDevice is a user entering userCode at the verification page and
// approving the app. The next poll of the flow receives the tokens. It
// returns ErrUnknownUserCode when no pending flow has the code.
func (s *Server) ApproveDevice(userCode string) error {
	return s.decideDevice(userCode, deviceApproved)
}

// DenyDevice is a user refusing the app at the verification page: polls of
// the flow answer access_denied from then on.
func (s *Server) DenyDevice(userCode string) error {
	return s.decideDevice(userCode, deviceDenied)
}

func (s *Server) decideDevice(userCode string, status deviceStatus) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.pendingDeviceLocked(userCode)
	if d == nil {
		return fmt.Errorf("%w: %q", ErrUnknownUserCode, userCode)
	}
	d.status = status
	s.log.Info("providersim: device flow decided", "client_id", d.clientID, "approved", status == deviceApproved)
	return nil
}

// SlowDownDevicePolls makes the next n device polls answer slow_down, as a
// provider under load does. n <= 0 does nothing.
func (s *Server) SlowDownDevicePolls(n int) {
	if n <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deviceSlowDowns += n
}

func newDeviceCodeValue() string { return "DEV" + randomString(base64.RawURLEncoding, 48) }

// handleVerification serves the verification page: a form for the user
// code (prefilled from ?user_code=, RFC 8628's verification_uri_complete)
// with approve and deny buttons. The simulated user is always logged in.
func (s *Server) handleVerification(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet {
		prefill := normalizeUserCode(r.URL.Query().Get("user_code"))
		verificationPage(w, http.StatusOK, "Connect your device",
			`<form method="post" action="`+VerificationPath+`"><label>Code <input name="user_code" value="`+html.EscapeString(prefill)+`" autocomplete="off"></label> `+
				`<button name="action" value="approve">Allow</button> <button name="action" value="deny">Deny</button></form>`)
		return
	}
	if err := r.ParseForm(); err != nil {
		verificationPage(w, http.StatusBadRequest, "Malformed request", "")
		return
	}
	status := deviceApproved
	if r.PostForm.Get("action") == "deny" {
		status = deviceDenied
	}
	if err := s.decideDevice(r.PostForm.Get("user_code"), status); err != nil {
		verificationPage(w, http.StatusBadRequest, "Invalid code", "<p>The code is unknown or has expired.</p>")
		return
	}
	if status == deviceDenied {
		verificationPage(w, http.StatusOK, "Access denied", "<p>The device was not connected.</p>")
		return
	}
	verificationPage(w, http.StatusOK, "Device connected", "<p>You can close this window.</p>")
}

func verificationPage(w http.ResponseWriter, status int, title, body string) {
	w.Header().Set("Content-Type", "text/html;charset=UTF-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write([]byte("<!DOCTYPE html><html><head><title>" + html.EscapeString(title) + "</title></head><body><h1>" +
		html.EscapeString(title) + "</h1>" + body + "</body></html>"))
}
