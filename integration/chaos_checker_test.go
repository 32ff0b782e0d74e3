package integration

import (
	"encoding/base64"
	"encoding/hex"
	"net/url"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// The fault test's checker must find each kind of violation in a history
// that has it, or a green fault test proves nothing.

// cleanHistory is a run with one Vault outage, one lost answer without
// grace (announced, imported again) and nothing wrong.
func cleanHistory() *faultHistory {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	return &faultHistory{
		Begin: t0, LastFault: at(30), Settle: 5 * time.Second, RecoveryBound: 10 * time.Second,
		Faults: []faultRecord{
			{Kind: "vault-kill", Target: faultTarget{Replica: -1, Vault: true}, Begin: at(10), End: at(12)},
			{Kind: "lost-answer", Target: faultTarget{Replica: -1, Provider: "fosite"}, Begin: at(20), End: at(30), Lost: true, LostCred: "hydra"},
			{Kind: "replica-kill", Target: faultTarget{Replica: 1}, Begin: at(5), End: at(6)},
		},
		Calls: []callRecord{
			{Replica: 0, Cred: "hydra", Begin: at(1), End: at(1.1), Checked: true, Valid: true},
			{Replica: 0, Cred: "acme", Begin: at(11), End: at(11.5), Code: codes.Unavailable, Reason: "STORE_UNAVAILABLE", RetryInfo: true},
			{Replica: 2, Cred: "acme", Begin: at(12), End: at(17), Code: codes.DeadlineExceeded},
			{Replica: 1, Cred: "acme", Begin: at(5.5), End: at(5.6), Code: codes.Unavailable},
			{Replica: 1, Cred: "hydra", Begin: at(22), End: at(22.1), Code: codes.FailedPrecondition, Reason: "REAUTHENTICATION_REQUIRED"},
			{Replica: 1, Cred: "hydra", Begin: at(23), End: at(23.1), Checked: true, Valid: false}, // the family died with the lost answer
		},
		Notices: []noticeRecord{{At: at(21), Cred: "hydra", Kind: "FAMILY_REVOKED", Reason: "LOST_ROTATION"}},
		Providers: []providerRecord{
			{Name: "fosite", Reuses: 1, LostAnswers: 1, Creds: []string{"hydra"}},
			{Name: "simulator", Creds: []string{"acme"}},
		},
		Recovery: []recoveryRecord{{Replica: 0, Served: at(31)}, {Replica: 1, Served: at(32)}},
	}
}

func TestFaultCheckerPassesACleanHistory(t *testing.T) {
	if vs := checkFaultHistory(cleanHistory()); len(vs) != 0 {
		t.Fatalf("violations in a clean history: %v", vs)
	}
}

func TestFaultCheckerFindsEachViolation(t *testing.T) {
	at := func(h *faultHistory, s float64) time.Time {
		return h.Begin.Add(time.Duration(s * float64(time.Second)))
	}
	for _, tc := range []struct {
		name   string
		want   string
		mutate func(h *faultHistory)
	}{
		{"a reuse beyond the lost answers", invReuse, func(h *faultHistory) { h.Providers[0].Reuses = 2 }},
		{"a reuse at a provider that lost nothing", invReuse, func(h *faultHistory) { h.Providers[1].Reuses = 1 }},
		{"a lost answer not announced", invLostRotation, func(h *faultHistory) { h.Notices = nil }},
		{"another revocation", invLostRotation, func(h *faultHistory) {
			h.Notices = append(h.Notices, noticeRecord{At: at(h, 25), Cred: "acme", Kind: "FAMILY_REVOKED", Reason: "REFRESH_TOKEN_REJECTED"})
		}},
		{"a killed token handed out", invHandedOutValid, func(h *faultHistory) {
			h.Calls = append(h.Calls, callRecord{Replica: 2, Cred: "acme", Begin: at(h, 40), End: at(h, 40.1), Checked: true, Valid: false})
		}},
		{"ABORTED during an outage", invFailureCode, func(h *faultHistory) {
			h.Calls = append(h.Calls, callRecord{Replica: 2, Cred: "acme", Begin: at(h, 11), End: at(h, 11.1), Code: codes.Aborted})
		}},
		{"UNAVAILABLE from the server without RetryInfo", invFailureCode, func(h *faultHistory) {
			h.Calls = append(h.Calls, callRecord{Replica: 2, Cred: "acme", Begin: at(h, 11), End: at(h, 11.1), Code: codes.Unavailable, Reason: "STORE_UNAVAILABLE"})
		}},
		{"the provider blamed for a Vault outage", invFailureReason, func(h *faultHistory) {
			h.Calls = append(h.Calls, callRecord{Replica: 0, Cred: "acme", Begin: at(h, 11), End: at(h, 11.1), Code: codes.Unavailable, Reason: "PROVIDER_UNAVAILABLE", RetryInfo: true})
		}},
		{"a retryable failure with nothing down", invFailureOutside, func(h *faultHistory) {
			h.Calls = append(h.Calls, callRecord{Replica: 0, Cred: "acme", Begin: at(h, 40), End: at(h, 40.1), Code: codes.Unavailable, Reason: "PROVIDER_UNAVAILABLE", RetryInfo: true})
		}},
		{"a transport failure of a replica that was up", invFailureOutside, func(h *faultHistory) {
			h.Calls = append(h.Calls, callRecord{Replica: 0, Cred: "acme", Begin: at(h, 5.5), End: at(h, 5.6), Code: codes.Unavailable})
		}},
		{"a family lost although the provider has a grace period", invFailureCode, func(h *faultHistory) {
			h.Providers = append(h.Providers, providerRecord{Name: "simulator-grace", Grace: true, LostAnswers: 1, Creds: []string{"acme-grace"}})
			h.Faults = append(h.Faults, faultRecord{Kind: "lost-answer", Target: faultTarget{Replica: -1, Provider: "simulator-grace"}, Begin: at(h, 40), End: at(h, 41), Lost: true, LostCred: "acme-grace"})
			h.Calls = append(h.Calls, callRecord{Replica: 0, Cred: "acme-grace", Begin: at(h, 40.5), End: at(h, 40.6), Code: codes.FailedPrecondition, Reason: "REAUTHENTICATION_REQUIRED"})
		}},
		{"a replica slow to recover", invRecovery, func(h *faultHistory) { h.Recovery[1].Served = at(h, 45) }},
		{"a replica never recovered", invRecovery, func(h *faultHistory) { h.Recovery[0].Served = time.Time{} }},
		{"a leak", invLeak, func(h *faultHistory) { h.Leaks = []string{"replica-0.log holds secret #3"} }},
		{"an incomplete history", invHistory, func(h *faultHistory) { h.Incomplete = []string{"no notice"} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := cleanHistory()
			tc.mutate(h)
			got := summarize(checkFaultHistory(h))
			if got[tc.want] == 0 || len(got) != 1 {
				t.Fatalf("violations %v, want %s only", got, tc.want)
			}
		})
	}
}

func TestFaultLeakFinderFindsEverySpelling(t *testing.T) {
	const secret = "5Aep861.tok/en+with=odd&chars~0123456789"
	for _, spelled := range []string{
		secret, base64.StdEncoding.EncodeToString([]byte(secret)), base64.RawURLEncoding.EncodeToString([]byte(secret)),
		hex.EncodeToString([]byte(secret)), url.QueryEscape(secret),
	} {
		if leaks := findLeaks([]string{secret}, map[string]string{"log": `{"msg":"x","v":"` + spelled + `"}`}); len(leaks) == 0 {
			t.Errorf("secret spelled %q not found", spelled)
		}
	}
	if leaks := findLeaks([]string{secret}, map[string]string{"log": `{"msg":"nothing here"}`}); len(leaks) != 0 {
		t.Errorf("found leaks in a clean log: %v", leaks)
	}
}

// Only the violations named by a pending fix are spared; with none pending
// every violation fails the run.
func TestFaultPendingFixesAreNarrow(t *testing.T) {
	for _, tc := range []struct {
		v       violation
		pending bool
	}{
		{violation{Invariant: invHandedOutValid}, false},
		{violation{Invariant: invFailureCode, Code: codes.Aborted}, false},
		{violation{Invariant: invFailureCode, Code: codes.Internal}, false},
		{violation{Invariant: invFailureOutside, Code: codes.Aborted}, false},
		{violation{Invariant: invReuse}, false},
		{violation{Invariant: invLeak}, false},
	} {
		if got := pendingOf(tc.v) != ""; got != tc.pending {
			t.Errorf("%s %s: pending %v, want %v", tc.v.Invariant, tc.v.Code, got, tc.pending)
		}
	}
}
