package providersim

import (
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

func deviceStartForm(scope string) url.Values {
	return url.Values{"response_type": {"device_code"}, "client_id": {testClientID}, "scope": {scope}}
}

func devicePollForm(code string) url.Values {
	return url.Values{"grant_type": {"device"}, "client_id": {testClientID}, "code": {code}}
}

// A person approves at the verification page: the form takes the user code
// as typed (lower case, no dash), and the next poll gets the tokens.
func TestDeviceVerificationPageApproves(t *testing.T) {
	h := setupProviderTest(t, Config{DeviceInterval: time.Second})
	start := h.post("/services/oauth2/token", deviceStartForm("api refresh_token"))
	if start.status != http.StatusOK {
		t.Fatalf("device start: %d %s", start.status, start.raw)
	}
	code, user := start.str("device_code"), start.str("user_code")
	if _, hasExpiry := start.obj["expires_in"]; hasExpiry || start.str("verification_uri") != h.srv.URL()+VerificationPath {
		t.Fatalf("Salesforce device answer %s: want verification_uri %s and no expires_in", start.raw, h.srv.URL()+VerificationPath)
	}
	if !slices.Contains(h.srv.Secrets(), code) {
		t.Error("the device code is not among Secrets(): leak checks would miss it")
	}

	page, err := h.do(t.Context(), http.MethodGet, VerificationPath+"?user_code=%22%3E%3Cscript%3E", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if page.status != http.StatusOK || strings.Contains(string(page.raw), "<script>") {
		t.Fatalf("verification page: %d, reflects markup: %s", page.status, page.raw)
	}

	typed := strings.ToLower(strings.ReplaceAll(user, "-", ""))
	if res := h.post(VerificationPath, url.Values{"user_code": {typed}, "action": {"approve"}}); res.status != http.StatusOK {
		t.Fatalf("approve: %d %s", res.status, res.raw)
	}
	if res := h.post(VerificationPath, url.Values{"user_code": {user}, "action": {"approve"}}); res.status != http.StatusBadRequest {
		t.Fatalf("approving a decided code again: %d, want 400", res.status)
	}
	tok := h.post("/services/oauth2/token", devicePollForm(code))
	if tok.status != http.StatusOK || tok.str("refresh_token") == "" || tok.str("signature") == "" {
		t.Fatalf("poll after approval: %d %s", tok.status, tok.raw)
	}
	if st := h.srv.Stats(); st.DeviceTokenExchanges != 1 || st.DevicePolls != 1 {
		t.Errorf("stats %+v: want one poll, one exchange", st)
	}
}

// The dialect a flow started in is the one it is polled in, and the scopes
// decide whether a refresh token comes with the grant.
func TestDeviceDialectsAndScopes(t *testing.T) {
	h := setupProviderTest(t, Config{})
	start := h.post(DeviceAuthorizationPath, url.Values{"client_id": {testClientID}, "scope": {"api"}})
	if start.status != http.StatusOK || start.str("verification_uri_complete") == "" {
		t.Fatalf("RFC 8628 start: %d %s", start.status, start.raw)
	}
	code := start.str("device_code")
	assertOAuthError(t, h.post("/services/oauth2/token", devicePollForm(code)), http.StatusBadRequest, "invalid_grant")
	if err := h.srv.ApproveDevice(start.str("user_code")); err != nil {
		t.Fatal(err)
	}
	tok := h.post("/services/oauth2/token", url.Values{"grant_type": {rfc8628GrantType}, "client_id": {testClientID}, "device_code": {code}})
	if tok.status != http.StatusOK || tok.str("access_token") == "" {
		t.Fatalf("RFC 8628 poll: %d %s", tok.status, tok.raw)
	}
	if tok.str("refresh_token") != "" {
		t.Fatal("scope api alone granted a refresh token")
	}
	if err := h.srv.ApproveDevice("ZZZZ-ZZZZ"); err == nil {
		t.Fatal("an unknown user code was approved")
	}
	res := h.post(DeviceAuthorizationPath, url.Values{"client_id": {"nobody"}})
	assertOAuthError(t, res, http.StatusBadRequest, "invalid_client_id")
}
