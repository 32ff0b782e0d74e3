package providersim

import (
	"net/http"
	"net/url"
	"testing"
	"time"
)

// Refresh-token introspection follows what the token endpoint would do with
// the token: active while it is current, or superseded but still acceptable
// once within the reuse grace window; inactive once rotated away, once its
// grace retry is spent, or once its family is revoked. Asking never presents
// it: no rotation, no reuse detection.
func TestIntrospectRefreshTokens(t *testing.T) {
	t.Parallel()
	active := func(h *harness, token string) bool {
		h.t.Helper()
		res := h.post("/services/oauth2/introspect", url.Values{
			"token": {token}, "token_type_hint": {"refresh_token"},
			"client_id": {testClientID}, "client_secret": {testSecret},
		})
		if res.status != http.StatusOK {
			h.t.Fatalf("introspect: %d %s", res.status, res.raw)
		}
		return res.obj["active"] == true
	}
	t.Run("no grace period", func(t *testing.T) {
		h := setupProviderTest(t, Config{})
		old := h.login()
		for range 2 { // asking twice changes nothing
			if !active(h, old) {
				t.Fatal("current refresh token inactive")
			}
		}
		_, current := h.mustRefresh(old)
		if active(h, old) || !active(h, current) {
			t.Fatal("after rotation the old token must be inactive and the new one active")
		}
		assertInvalidGrant(t, h.refresh(old)) // a thief replays the old token
		if active(h, current) {
			t.Error("the current token of a family revoked for reuse is active")
		}
		if st := h.srv.Stats(); st.Rotations != 1 || st.ReuseDetections != 1 {
			t.Errorf("stats %+v: introspection must not rotate or count as reuse", st)
		}
	})
	t.Run("grace period", func(t *testing.T) {
		h := setupProviderTest(t, Config{ReuseGrace: time.Minute})
		old := h.login()
		_, current := h.mustRefresh(old)
		if !active(h, old) || !active(h, current) {
			t.Fatal("within the grace window the superseded token is still acceptable, so active")
		}
		_, afterGrace := h.mustRefresh(old) // the grace retry: current dies
		if active(h, old) || active(h, current) || !active(h, afterGrace) {
			t.Error("after the grace retry only the token it issued is active")
		}
		h.clock.Add(time.Minute)
		_, next := h.mustRefresh(afterGrace)
		h.clock.Add(time.Minute)
		if active(h, afterGrace) || !active(h, next) {
			t.Error("past the grace window a superseded token is inactive")
		}
		if st := h.srv.Stats(); st.GraceReuses != 1 || st.ReuseDetections != 0 || st.FamiliesRevoked != 0 {
			t.Errorf("stats %+v", st)
		}
	})
}
