package detect

import (
	"testing"
	"time"
)

// What GetCredential says of a family's early detection: the first reason
// that keeps the check from watching it, in the order an operator fixes
// them (server setting, credential, family, access token).
func TestDescribeNamesTheFirstReasonNotToWatch(t *testing.T) {
	for _, tt := range []struct {
		interval                       time.Duration
		endpoint, active, corroborable bool
		want                           State
	}{
		{0, true, true, true, StateDisabled},
		{time.Minute, false, false, false, StateNoEndpoint},
		{time.Minute, true, false, false, StateNoFamily},
		{time.Minute, true, true, false, StateWaiting},
		{time.Minute, true, true, true, StateActive},
	} {
		got, why := Describe(tt.interval, tt.endpoint, tt.active, tt.corroborable)
		if got != tt.want || why == "" {
			t.Errorf("Describe(%v, endpoint %v, active %v, corroborable %v) = %s (%q), want %s", tt.interval, tt.endpoint, tt.active, tt.corroborable, got, why, tt.want)
		}
	}
}

// An inactive refresh token counts at Salesforce always; at a generic
// provider only while the access token has a second of known life left.
func TestCorroborableNeedsALiveAccessTokenAtGenericProviders(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	for _, tt := range []struct {
		generic bool
		token   string
		alive   time.Time
		want    bool
	}{
		{false, "", time.Time{}, true},
		{true, "", now.Add(time.Hour), false},
		{true, "at", now.Add(time.Second), true},
		{true, "at", now.Add(time.Second - time.Nanosecond), false},
	} {
		if got := Corroborable(tt.generic, tt.token, tt.alive, now); got != tt.want {
			t.Errorf("Corroborable(generic %v, token %q, alive %v after now) = %v, want %v", tt.generic, tt.token, tt.alive.Sub(now), got, tt.want)
		}
	}
}
