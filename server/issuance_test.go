package server

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rotavault/rotavault/audit"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/poll"
)

// issuanceAuditor is the auditor the server summarises issuance into: the
// recording one when the test asks for summaries.
func issuanceAuditor(flush time.Duration, a *recordingAuditor) Auditor {
	if flush == 0 {
		return nil
	}
	return a
}

func (a *recordingAuditor) issued() []audit.Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []audit.Event
	for _, e := range a.events {
		if e.Action == ActionTokensIssued {
			out = append(out, e)
		}
	}
	return out
}

// Every access token handed out is accounted for in the audit trail, per
// caller and credential, without an audit record per call: two callers
// making 50 and 30 calls produce one summary record each with those counts.
func TestTokenIssuanceSummarisedPerCallerAndCredential(t *testing.T) {
	e := newAuthEnv(t, authEnvOptions{issuanceFlush: 50 * time.Millisecond})
	e.seed()
	// Both may read cred-a: the admin by role, payments by the policy.
	rt, err := e.sim.IssueRefreshToken(simClient, nil)
	if err != nil {
		t.Fatal(err)
	}
	ops := rotavaultv1.NewTokenVaultServiceClient(e.as(idOps, false))
	if _, err := ops.Reauthenticate(testCtx(t), &rotavaultv1.ReauthenticateRequest{CredentialId: "cred-a",
		Flow: &rotavaultv1.ReauthenticateRequest_RefreshTokenImport{RefreshTokenImport: &rotavaultv1.RefreshTokenImport{RefreshToken: rt}}}); err != nil {
		t.Fatal(err)
	}
	calls := map[string]int{idPayments: 50, idAdmin: 30}
	for id, n := range calls {
		c := rotavaultv1.NewTokenVaultServiceClient(e.as(id, false))
		for range n {
			if _, err := c.GetAccessToken(testCtx(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "cred-a"}); err != nil {
				t.Fatalf("%s: %v", id, err)
			}
		}
	}
	// Summaries are written in the background: await both counts.
	poll.UntilSeen(t, awaitDeadline, "issuance summaries counting every call", func() (bool, string) {
		got := map[string]int{}
		records := 0
		for _, ev := range e.auditor.issued() {
			if ev.Credential != "cred-a" {
				t.Fatalf("summary for %s, want only cred-a: %+v", ev.Credential, ev)
			}
			var n int
			if _, err := fmt.Sscanf(ev.Detail, "count=%d", &n); err != nil {
				t.Fatalf("summary detail %q: %v", ev.Detail, err)
			}
			got[ev.Actor] += n
			records++
		}
		if got[idPayments] == calls[idPayments] && got[idAdmin] == calls[idAdmin] {
			if records >= calls[idPayments] {
				t.Fatalf("%d summary records for %d calls: one per call is what the summary avoids", records, calls[idPayments]+calls[idAdmin])
			}
			for _, ev := range e.auditor.issued() {
				if !strings.Contains(ev.Detail, "first=") || !strings.Contains(ev.Detail, "last=") {
					t.Fatalf("summary without first/last seen: %q", ev.Detail)
				}
			}
			return true, ""
		}
		return false, fmt.Sprintf("counted %v, want %v", got, calls)
	})
}
