package broker

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/authflow"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/providersim"
)

// flowRedirect is the redirect URI the completion tests register with the
// simulator's app; nothing listens there, the tests read the redirect.
const flowRedirect = "http://127.0.0.1:1/cb"

// withRedirects registers the redirect URIs with the simulator's app.
func (env *flowEnv) withRedirects(uris ...string) {
	env.sim.AddClient(providersim.Client{ID: env.spec.ClientID, Secret: env.spec.ClientSecret, RedirectURIs: uris})
}

// authorizeAtSim plays the user's browser: it opens the authorize URL (the
// simulator approves at once) and returns the code of its redirect.
func authorizeAtSim(t *testing.T, authorizeURL string) string {
	t.Helper()
	hc := &http.Client{Timeout: flowDeadline, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Get(authorizeURL)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || resp.StatusCode != http.StatusFound || loc.Query().Get("code") == "" {
		t.Fatalf("authorize answered %d, Location %q: want a redirect with a code", resp.StatusCode, resp.Header.Get("Location"))
	}
	return loc.Query().Get("code")
}

// authorizeX starts an authorization-code flow for credential x with
// flowRedirect and approves it at the simulator: the flow and its code.
func authorizeX(ctx context.Context, t *testing.T, b *Broker) (authflow.PendingAuthorization, string) {
	t.Helper()
	p, err := b.Flows().StartAuthorization(ctx, "x", flowRedirect, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p, authorizeAtSim(t, p.AuthorizeURL)
}

// recreateElsewhere deletes credential id and creates it again on replica
// other: a new incarnation that replicas caching the old one do not hear
// about (a credential without an active family is deleted without notice).
func recreateElsewhere(ctx context.Context, t *testing.T, other *Broker, id string, spec credspec.Spec) {
	t.Helper()
	if err := other.Credentials().Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Credentials().Create(ctx, id, spec); err != nil {
		t.Fatal(err)
	}
}

// wantAwaitingReauth checks, through a replica that reads the store, that
// the recreated credential got no family.
func wantAwaitingReauth(ctx context.Context, t *testing.T, b *Broker, id string) {
	t.Helper()
	c, err := b.Credentials().Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if c.Status != family.StatusAwaitingReauth || c.FamilyID != "" {
		t.Fatalf("recreated credential: status %s family %q; a flow started for the deleted one must not install into it", c.Status, c.FamilyID)
	}
}

// A flow belongs to the credential it was started for, and to that
// incarnation of it. When another replica deletes the credential and
// creates it again (another app, another org, perhaps), the replica
// completing the flow — whose cached view still shows the old incarnation,
// since deleting a credential without an active family sends no notice —
// must not install the grant into the new credential.
func TestFlowDoesNotCompleteIntoARecreatedCredential(t *testing.T) {
	t.Run("authorization code", func(t *testing.T) {
		ctx := context.Background()
		env := newFlowEnv(t)
		env.withRedirects(flowRedirect)
		a := env.replica(t, "replica-a", time.Hour)
		b := env.replica(t, "replica-b", time.Hour)
		if _, err := a.Credentials().Create(ctx, "x", env.spec); err != nil {
			t.Fatal(err)
		}
		p, err := a.Flows().StartAuthorization(ctx, "x", flowRedirect, nil)
		if err != nil {
			t.Fatal(err)
		}
		recreateElsewhere(ctx, t, b, "x", env.spec)
		code := authorizeAtSim(t, p.AuthorizeURL)

		if _, err := a.Flows().CompleteAuthorization(ctx, "x", p.State, code); !errors.Is(err, brokererr.ErrNotFound) {
			t.Fatalf("completing a flow of the deleted credential: %v, want ErrNotFound", err)
		}
		wantAwaitingReauth(ctx, t, b, "x")
		if n := env.aud.count(audit.ActionReauthenticated); n != 0 {
			t.Errorf("%d families installed, want none", n)
		}
		if f := readFlowRecord(t, env.st, p.State); f.Status != authflow.StatusFailed || f.Verifier != "" {
			t.Errorf("flow %+v: want failed, without its verifier", f)
		}
	})

	t.Run("device", func(t *testing.T) {
		ctx := context.Background()
		env := newFlowEnv(t)
		a := env.replica(t, "replica-a", time.Hour)
		b := env.replica(t, "replica-b", time.Hour)
		if _, err := a.Credentials().Create(ctx, "x", env.spec); err != nil {
			t.Fatal(err)
		}
		p, err := a.Flows().StartDeviceAuthorization(ctx, "x", nil)
		if err != nil {
			t.Fatal(err)
		}
		recreateElsewhere(ctx, t, b, "x", env.spec)
		if err := env.sim.ApproveDevice(p.UserCode); err != nil {
			t.Fatal(err)
		}
		f := awaitFlow(t, env.st, p.State, "finished", func(f *authflow.Record) bool { return !f.Pending() })
		if f.Status != authflow.StatusFailed || f.Failure != authflow.FlowRefused {
			t.Fatalf("device flow of the deleted credential ended %s/%s, want failed/refused", f.Status, f.Failure)
		}
		wantAwaitingReauth(ctx, t, b, "x")
		if n := env.aud.count(audit.ActionReauthenticated); n != 0 {
			t.Errorf("%d families installed, want none", n)
		}
	})
}

// A caller that goes away while the code is being exchanged (a browser tab
// closed, a client's deadline) does not abandon the exchange: the provider
// spends the code when it sees it, and the tokens it answers with are
// installed.
func TestCodeExchangeOutlivesItsCaller(t *testing.T) {
	ctx := context.Background()
	env := newFlowEnv(t)
	env.withRedirects(flowRedirect)
	b := env.primary(ctx, t)
	p, code := authorizeX(ctx, t, b)
	arrived := env.sim.Stats().TokenRequests
	// The provider takes its time; the caller leaves while it does.
	env.sim.SetLatency(time.Second)

	callCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := b.Flows().CompleteAuthorization(callCtx, "x", p.State, code)
		done <- err
	}()
	wctx, wcancel := context.WithTimeout(ctx, flowDeadline)
	defer wcancel()
	if err := env.sim.WaitForTokenRequests(wctx, arrived+1); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-done:
	case <-wctx.Done():
		t.Fatal("CompleteAuthorization did not return")
	}
	env.sim.SetLatency(0)

	act := awaitActivation(t, b, "x", p.State)
	if n := env.sim.Stats().CodeExchanges; n != 1 {
		t.Errorf("code exchanges at the provider: %d, want 1", n)
	}
	tok, err := b.GetAccessToken(ctx, access.Request{CredentialID: "x"})
	if err != nil || tok.FamilyID != act.FamilyID {
		t.Fatalf("token after the exchange: %+v %v, want family %s", tok, err, act.FamilyID)
	}
}

// Naming the server's own callback as the redirect URI is the server
// callback: the browser lands there, and the callback completes the flow
// rather than calling its state unknown.
func TestExplicitServerCallbackURLIsTheServerCallback(t *testing.T) {
	ctx := context.Background()
	env := newFlowEnv(t)
	const callback = "http://127.0.0.1:1/oauth/callback"
	env.withRedirects(callback)
	b := env.primary(ctx, t, option.WithCallbackURL(callback))
	p, err := b.Flows().StartAuthorization(ctx, "x", callback, nil)
	if err != nil {
		t.Fatal(err)
	}
	code := authorizeAtSim(t, p.AuthorizeURL)
	act, err := b.Flows().CompleteCallback(ctx, authflow.Callback{State: p.State, Code: code})
	if err != nil {
		t.Fatalf("the callback refused a flow started for it: %v", err)
	}
	if got := awaitActivation(t, b, "x", p.State); got.FamilyID != act.FamilyID {
		t.Fatalf("check reports family %s, the callback installed %s", got.FamilyID, act.FamilyID)
	}
}

// When the code was exchanged but the family cannot be stored, the code is
// spent and the flow failed: the caller hears that the flow failed and must
// start again, not a retryable UNAVAILABLE that no retry can satisfy.
func TestCodeExchangedButNotStoredEndsTheFlow(t *testing.T) {
	ctx := context.Background()
	env := newFlowEnv(t)
	st := &faultStore{Store: env.st}
	env.st = st
	env.withRedirects(flowRedirect)
	b := env.primary(ctx, t)
	p, code := authorizeX(ctx, t, b)
	before := env.sim.Stats()
	up := st.inject(&fault{op: "put", prefix: "families/", fail: errStoreDown})
	_, err := b.Flows().CompleteAuthorization(ctx, "x", p.State, code)
	var ae *authflow.AuthorizationError
	var ue *brokererr.UnavailableError
	if !errors.As(err, &ae) || errors.As(err, &ue) {
		t.Fatalf("exchanged but not stored: %v, want an *AuthorizationError (start again), not a retryable unavailability", err)
	}
	// The grant nobody holds is not left live at the provider.
	if s := env.sim.Stats(); s.Revocations != before.Revocations+1 || s.FamiliesRevoked != before.FamiliesRevoked+1 {
		t.Fatalf("after an exchange that could not be stored the provider saw %d revocations, %d families revoked; want the grant revoked",
			s.Revocations-before.Revocations, s.FamiliesRevoked-before.FamiliesRevoked)
	}
	up()
	if _, err := b.Flows().CompleteAuthorization(ctx, "x", p.State, code); !isInvalidField(err, "state") {
		t.Fatalf("the same code again: %v, want invalid state (the flow ended)", err)
	}
	if _, err := b.Flows().CheckAuthorization(ctx, "x", p.State, 0); !errors.As(err, &ae) || ae.Reason != authflow.FlowRefused {
		t.Fatalf("check: %v, want the flow failed", err)
	}
}
