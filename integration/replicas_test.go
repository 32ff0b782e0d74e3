package integration

import (
	"encoding/json"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/server"
)

const (
	replicaCount      = 3
	callersPerReplica = 300
)

// crowd sends callersPerReplica concurrent calls to every replica at once and
// returns the tokens they got.
func crowd(t *testing.T, replicas []*env, id string) []string {
	t.Helper()
	var wg sync.WaitGroup
	tokens := make([]string, len(replicas)*callersPerReplica)
	start := make(chan struct{})
	for r, rep := range replicas {
		for i := range callersPerReplica {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				resp, err := rep.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: id})
				if err != nil {
					t.Errorf("replica %d caller %d: %v", r, i, err)
					return
				}
				tokens[r*callersPerReplica+i] = resp.GetAccessToken()
			}()
		}
	}
	close(start)
	wg.Wait()
	return tokens
}

func TestReplicasShareOneRefresh(t *testing.T) {
	primary := newEnv(t, envOptions{vault: vaulttest.StartDev(t)})
	primary.installSalesforce("acme")
	first := primary.token("acme")
	replicas := []*env{primary}
	for range replicaCount - 1 {
		replicas = append(replicas, primary.replica())
	}

	t.Run("cold replicas take the stored token", func(t *testing.T) {
		before := primary.sim.Stats().RefreshRequests
		for _, r := range replicas[1:] {
			if tok := r.token("acme"); tok.GetAccessToken() != first.GetAccessToken() {
				t.Fatal("a cold replica handed out another token")
			}
		}
		if primary.sim.Stats().RefreshRequests != before {
			t.Fatal("a cold replica refreshed")
		}
	})

	t.Run("expired token, 3 replicas x 300 callers", func(t *testing.T) {
		before := primary.sim.Stats()
		primary.expire()
		tokens := crowd(t, replicas, "acme")
		after := primary.sim.Stats()
		if got := after.RefreshRequests - before.RefreshRequests; got != 1 {
			t.Fatalf("the provider saw %d refreshes, want exactly 1", got)
		}
		if after.ReuseDetections != 0 {
			t.Fatalf("reuse at the provider: %+v", after)
		}
		for i, tok := range tokens {
			if tok != tokens[0] || tok == first.GetAccessToken() {
				t.Fatalf("caller %d got a stale or different token", i)
			}
		}
		var waits int64
		for _, r := range replicas {
			waits += r.broker.Stats().ClaimWaits
		}
		t.Logf("replicas waited %d times on another replica's claim", waits)
	})
}

func TestReplicasShareOneRefreshWithFosite(t *testing.T) {
	primary := newEnv(t, envOptions{vault: vaulttest.StartDev(t)})
	fs, _ := withFosite(t, primary, "hydra")
	primary.token("hydra")
	replicas := []*env{primary, primary.replica(), primary.replica()}
	before := fs.Stats()
	primary.expire()
	tokens := crowd(t, replicas, "hydra")
	after := fs.Stats()
	if got := after.RefreshRequests - before.RefreshRequests; got != 1 || after.InvalidGrants != 0 {
		t.Fatalf("fosite saw %d refreshes and %d refusals, want 1 and 0", got, after.InvalidGrants)
	}
	for i := range tokens {
		if tokens[i] != tokens[0] {
			t.Fatalf("caller %d got a different token", i)
		}
	}
}

// plantDeadHolder makes the family look as if a replica claimed its refresh
// and died: optionally after presenting the refresh token to the provider
// (the provider rotated, the new token died with the process).
func plantDeadHolder(t *testing.T, e *env, id string, presented bool) {
	t.Helper()
	keys, err := e.store.List(ctxT(t), "families/"+id+"/")
	if err != nil || len(keys) != 1 {
		t.Fatalf("family records of %s: %v %v", id, keys, err)
	}
	rec, err := e.store.Get(ctxT(t), keys[0])
	if err != nil {
		t.Fatal(err)
	}
	var fam map[string]any
	if err := json.Unmarshal(rec.Value, &fam); err != nil {
		t.Fatal(err)
	}
	if presented {
		resp, err := http.PostForm(e.sim.URL()+"/services/oauth2/token", url.Values{
			"grant_type": {"refresh_token"}, "refresh_token": {fam["refresh_token"].(string)}, "client_id": {simClientID}, "client_secret": {simClientSecret},
		})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("the dead holder's refresh answered %d", resp.StatusCode)
		}
	}
	fam["claim"] = map[string]any{"holder": "dead-replica", "deadline": e.clock.now().Add(300 * time.Millisecond)}
	raw, err := json.Marshal(fam)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Put(ctxT(t), keys[0], raw, rec.Version); err != nil {
		t.Fatal(err)
	}
}

func TestTakeoverAfterAHolderDied(t *testing.T) {
	t.Run("died before calling the provider: rotation continues", func(t *testing.T) {
		e := newEnv(t, envOptions{vault: vaulttest.StartDev(t)})
		e.installSalesforce("acme")
		first := e.token("acme")
		e.expire()
		plantDeadHolder(t, e, "acme", false)
		tok := e.token("acme") // waits for the claim's deadline, then takes over
		if tok.GetFamilyId() != first.GetFamilyId() || tok.GetGeneration() != first.GetGeneration()+1 {
			t.Fatalf("after takeover: %+v", tok)
		}
		if s := e.sim.Stats(); s.ReuseDetections != 0 {
			t.Fatalf("takeover reused a token: %+v", s)
		}
		if e.broker.Stats().ClaimWaits == 0 {
			t.Fatal("the live claim was not respected")
		}
	})
	t.Run("died after the provider rotated, no grace period: a lost rotation", func(t *testing.T) {
		e := newEnv(t, envOptions{vault: vaulttest.StartDev(t)})
		e.installSalesforce("acme")
		stream, _ := e.watch(ctxT(t), "", "acme")
		e.expire()
		plantDeadHolder(t, e, "acme", true)
		_, err := e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
		wantCode(t, err, codes.FailedPrecondition, server.ReasonReauthenticationRequired)
		if n := nextNotice(t, stream); n.GetReason() != rotavaultv1.RevocationReason_REVOCATION_REASON_LOST_ROTATION {
			t.Fatalf("reason %s, want LOST_ROTATION (not theft)", n.GetReason())
		}
		s := e.sim.Stats()
		t.Logf("provider saw: %d refreshes, %d rotations, %d reuse detections", s.RefreshRequests, s.Rotations, s.ReuseDetections)
		if s.ReuseDetections != 1 {
			t.Fatalf("provider saw %+v, want exactly one reuse (the takeover)", s)
		}
	})
	t.Run("died after the provider rotated, with a grace period: recovered", func(t *testing.T) {
		e := newEnv(t, envOptions{vault: vaulttest.StartDev(t), sim: providersim.Config{ReuseGrace: time.Minute}})
		e.installSalesforce("acme", func(s *rotavaultv1.CredentialSpec) { s.ReuseGracePeriod = durationpb.New(time.Minute) })
		first := e.token("acme")
		e.expire()
		plantDeadHolder(t, e, "acme", true)
		tok := e.token("acme")
		if tok.GetFamilyId() != first.GetFamilyId() || !e.sim.AccessTokenActive(tok.GetAccessToken()) {
			t.Fatal("takeover within the grace period did not recover the family")
		}
		if s := e.sim.Stats(); s.GraceReuses != 1 || s.FamiliesRevoked != 0 {
			t.Fatalf("provider saw %+v", s)
		}
	})
}

// A watcher whose replica goes away resumes on another with its cursor.
func TestWatchResumesOnAnotherReplica(t *testing.T) {
	primary := newEnv(t, envOptions{vault: vaulttest.StartDev(t)})
	primary.installSalesforce("acme")
	other := primary.replica()
	stream, _ := primary.watch(ctxT(t), "", "acme")
	primary.revokeByTheft("acme")
	seen := nextNotice(t, stream)
	rt, err := primary.sim.IssueRefreshToken(simClientID, nil)
	if err != nil {
		t.Fatal(err)
	}
	act := primary.importToken("acme", rt) // missed by the watcher
	primary.stop()

	stream, _ = other.watch(ctxT(t), seen.GetCursor(), "acme")
	if n := nextNotice(t, stream); n.GetKind() != rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_ACTIVATED || n.GetFamilyId() != act.GetFamilyId() {
		t.Fatalf("resumed on another replica with %+v", n)
	}
}

// A client secret rotated through one replica is used by the others at
// their next refresh: the provider's refusal of the old one makes them
// re-read the credential instead of failing.
func TestClientSecretRotatedOnAnotherReplica(t *testing.T) {
	primary := newEnv(t, envOptions{vault: vaulttest.StartDev(t)})
	primary.installSalesforce("acme")
	other := primary.replica()
	first := other.token("acme") // other caches the credential with the old secret

	const newSecret = "rotated-on-primary-31"
	primary.sim.AddClient(providersim.Client{ID: simClientID, Secret: newSecret, RedirectURIs: []string{callbackURI}, RequirePKCE: true})
	if _, err := primary.admin.UpdateCredential(ctxT(t), &rotavaultv1.UpdateCredentialRequest{CredentialId: "acme",
		Spec: &rotavaultv1.CredentialSpec{ClientSecret: newSecret}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"client_secret"}}}); err != nil {
		t.Fatal(err)
	}
	primary.expire()
	tok := other.token("acme")
	if tok.GetFamilyId() != first.GetFamilyId() || tok.GetGeneration() != first.GetGeneration()+1 {
		t.Fatalf("refresh on the other replica: %+v", tok)
	}
}
