package integration

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/rotavault/rotavault/client"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/poll"
)

// A consumer calls the Salesforce API through the Go client's Transport. A
// thief replays an old refresh token; the provider revokes the family. The
// consumer's next call gets the API's 401, reports it, and learns from
// Rotavault that the credential needs reauthentication — a typed error, and
// a FAMILY_REVOKED notice on its watch. After the operator reauthenticates,
// the same client works again without being restarted.
func TestGoClientTransportThroughTheftAndRecovery(t *testing.T) {
	e := newEnv(t, envOptions{})
	oldRefreshToken := e.installSalesforce("acme")
	notices := make(chan *rotavaultv1.Notice, 10)
	c, err := client.New(e.conn, client.WithNoticeHandler(func(n *rotavaultv1.Notice) { notices <- n }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	awaitWatchers(t, e, 1) // notices from here on reach the client
	hc := &http.Client{Transport: &client.Transport{Client: c, CredentialID: "acme"}}
	tok, err := c.Token(ctxT(t), "acme")
	if err != nil {
		t.Fatal(err)
	}
	api := tok.InstanceURL + "/services/data/v62.0/"
	get := func() (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctxT(t), http.MethodGet, api, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := hc.Do(req)
		if err == nil {
			_ = resp.Body.Close()
		}
		return resp, err
	}
	if resp, err := get(); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("before the theft: %v, %v", resp, err)
	}

	// The thief presents the superseded refresh token: Salesforce revokes
	// the whole family, access tokens included.
	resp, err := http.PostForm(e.sim.URL()+"/services/oauth2/token", url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {oldRefreshToken},
		"client_id": {simClientID}, "client_secret": {simClientSecret},
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if s := e.sim.Stats(); resp.StatusCode != http.StatusBadRequest || s.ReuseDetections != 1 {
		t.Fatalf("thief's refresh: %s, provider stats %+v", resp.Status, s)
	}

	_, err = get()
	var reauth *client.ReauthenticationRequiredError
	if !errors.As(err, &reauth) || reauth.CredentialID != "acme" {
		t.Fatalf("after the theft: %v, want *ReauthenticationRequiredError for acme", err)
	}
	n := awaitNotice(t, notices, rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_REVOKED)
	// Found out by introspection before presenting the refresh token, or by
	// the provider's invalid_grant: either way the provider's doing.
	switch n.GetReason() {
	case rotavaultv1.RevocationReason_REVOCATION_REASON_REVOKED_AT_PROVIDER, rotavaultv1.RevocationReason_REVOCATION_REASON_REFRESH_TOKEN_REJECTED:
	default:
		t.Fatalf("notice reason = %s", n.GetReason())
	}
	if n.GetFamilyId() != tok.FamilyID {
		t.Fatalf("notice = %v", n)
	}

	// Recovery: the operator installs a new family; the client follows.
	rt, err := e.sim.IssueRefreshToken(simClientID, nil)
	if err != nil {
		t.Fatal(err)
	}
	act := e.importToken("acme", rt)
	awaitNotice(t, notices, rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_ACTIVATED)
	if resp, err := get(); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("after reauthentication: %v, %v", resp, err)
	}
	if tok, err := c.Token(ctxT(t), "acme"); err != nil || tok.FamilyID != act.GetFamilyId() {
		t.Fatalf("after reauthentication: %v, %v; want family %s", tok, err, act.GetFamilyId())
	}
}

// awaitWatchers waits until the server holds n revocation watches.
func awaitWatchers(t *testing.T, e *env, n int) {
	t.Helper()
	poll.UntilSeen(t, awaitDeadline, fmt.Sprintf("%d watches at the server", n), func() (bool, string) {
		got := e.broker.SubscriberCount()
		return got >= n, fmt.Sprintf("%d watches", got)
	})
}

// awaitNotice returns the next notice of kind from ch, skipping others.
func awaitNotice(t *testing.T, ch <-chan *rotavaultv1.Notice, kind rotavaultv1.NoticeKind) *rotavaultv1.Notice {
	t.Helper()
	deadline := time.After(awaitDeadline)
	for {
		select {
		case n := <-ch:
			if n.GetKind() == kind {
				return n
			}
		case <-deadline:
			t.Fatalf("no %s notice within %s", kind, awaitDeadline)
			return nil
		}
	}
}
