package integration

import (
	"net/http"
	"net/url"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/fositeserver"
	"github.com/rotavault/rotavault/server"
)

const (
	fositeClientID     = "rotavault-fosite"
	fositeClientSecret = "fosite-client-secret-9a7c"
)

// withFosite starts an ory/fosite authorization server — a third-party
// implementation that rotates refresh tokens and revokes the family on reuse
// — and registers it as a generic OAuth 2.0 credential, returning the
// imported (now superseded) refresh token.
func withFosite(t *testing.T, e *env, id string) (*fositeserver.Server, string) {
	t.Helper()
	return withFositeCredential(t, e, id, fositeserver.Config{AccessTokenLifespan: accessLifetime})
}

func TestFositeConcurrentCallersShareOneRefresh(t *testing.T) {
	e := newEnv(t, envOptions{})
	fs, _ := withFosite(t, e, "hydra")
	first := e.token("hydra")
	if lifetime := first.GetExpireTime().AsTime().Sub(first.GetIssueTime().AsTime()); lifetime > accessLifetime+5e9 || lifetime < accessLifetime-5e9 {
		t.Fatalf("expires_in not honoured: lifetime %s", lifetime)
	}
	before := fs.Stats().RefreshRequests
	e.expire()
	var wg sync.WaitGroup
	tokens := make([]string, concurrentCallers)
	for i := range concurrentCallers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "hydra"})
			if err != nil {
				t.Errorf("caller %d: %v", i, err)
			}
			tokens[i] = resp.GetAccessToken()
		}()
	}
	wg.Wait()
	if got := fs.Stats().RefreshRequests - before; got != 1 {
		t.Fatalf("fosite saw %d refreshes for %d callers, want 1", got, concurrentCallers)
	}
	for i := range tokens {
		if tokens[i] != tokens[0] || tokens[i] == first.GetAccessToken() {
			t.Fatalf("caller %d got a stale or different token", i)
		}
	}
	if s := fs.Stats(); s.InvalidGrants != 0 {
		t.Fatalf("fosite refused a refresh: %+v", s)
	}
}

func TestFositeReuseRevokesFamilyAndReauthenticationRestores(t *testing.T) {
	e := newEnv(t, envOptions{})
	fs, oldToken := withFosite(t, e, "hydra")
	stream, _ := e.watch(ctxT(t), "", "hydra")
	first := e.token("hydra")

	resp, err := http.PostForm(fs.TokenURL(), url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {oldToken}, "client_id": {fositeClientID}, "client_secret": {fositeClientSecret},
	})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("fosite answered reuse with %d", resp.StatusCode)
	}
	e.expire()
	_, err = e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "hydra"})
	wantCode(t, err, codes.FailedPrecondition, server.ReasonReauthenticationRequired)
	n := nextNotice(t, stream)
	if n.GetReason() != rotavaultv1.RevocationReason_REVOCATION_REASON_REFRESH_TOKEN_REJECTED || n.GetFamilyId() != first.GetFamilyId() {
		t.Fatalf("notice = %+v", n)
	}

	act := e.authorize("hydra")
	if tok := e.token("hydra"); tok.GetFamilyId() != act.GetFamilyId() {
		t.Fatalf("after reauthentication got family %s, want %s", tok.GetFamilyId(), act.GetFamilyId())
	}
	e.expire()
	if tok := e.token("hydra"); tok.GetFamilyId() != act.GetFamilyId() || tok.GetGeneration() != 2 {
		t.Fatalf("new family does not rotate: %+v", tok)
	}
}

func TestFositeLostResponseIsALostRotation(t *testing.T) {
	e := newEnv(t, envOptions{})
	fs, _ := withFosite(t, e, "hydra")
	stream, _ := e.watch(ctxT(t), "", "hydra")
	e.token("hydra")
	fs.LoseNextResponses(1)
	e.expire()
	_, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "hydra"})
	wantCode(t, err, codes.FailedPrecondition, server.ReasonReauthenticationRequired)
	if n := nextNotice(t, stream); n.GetReason() != rotavaultv1.RevocationReason_REVOCATION_REASON_LOST_ROTATION {
		t.Fatalf("reason = %s, want LOST_ROTATION", n.GetReason())
	}
	// What the provider saw: the refresh whose answer was lost, then our
	// single retry, refused as reuse.
	if s := fs.Stats(); s.LostResponses != 1 || s.InvalidGrants != 1 {
		t.Fatalf("fosite saw %+v, want one lost response and one refused retry", s)
	}
}
