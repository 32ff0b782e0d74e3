package integration

import (
	"context"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/rotavault/rotavault/broker/option"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/server"
)

// deviceInterval is the polling interval the simulator announces in these
// tests: RFC 8628 counts in whole seconds, and 1 s keeps the tests short.
const deviceInterval = time.Second

// deviceOptions run the simulator's device flows at a 1 s interval and let
// replicas take a dead or stopped poller's flows over quickly.
func deviceOptions(o envOptions) envOptions {
	o.sim.DeviceInterval = deviceInterval
	o.brokerOpts = append(o.brokerOpts, option.WithFlowTiming(100*time.Millisecond, time.Second))
	return o
}

func (e *env) reauth(ctx context.Context, id string, flow any) (*rotavaultv1.ReauthenticateResponse, error) {
	req := &rotavaultv1.ReauthenticateRequest{CredentialId: id}
	switch f := flow.(type) {
	case *rotavaultv1.DeviceAuthorizationStart:
		req.Flow = &rotavaultv1.ReauthenticateRequest_DeviceAuthorizationStart{DeviceAuthorizationStart: f}
	case *rotavaultv1.AuthorizationCodeStart:
		req.Flow = &rotavaultv1.ReauthenticateRequest_AuthorizationCodeStart{AuthorizationCodeStart: f}
	case *rotavaultv1.AuthorizationCheck:
		req.Flow = &rotavaultv1.ReauthenticateRequest_AuthorizationCheck{AuthorizationCheck: f}
	default:
		e.t.Fatalf("unknown flow %T", flow)
	}
	return e.vault.Reauthenticate(ctx, req)
}

// startDevice begins a device flow and returns its pending answer.
func (e *env) startDevice(id string, scopes ...string) *rotavaultv1.DeviceAuthorizationPending {
	e.t.Helper()
	resp, err := e.reauth(ctxT(e.t), id, &rotavaultv1.DeviceAuthorizationStart{Scopes: scopes})
	if err != nil {
		e.t.Fatalf("device start for %s: %v", id, err)
	}
	e.checkResponseClean(resp)
	p := resp.GetDeviceAuthorizationPending()
	if p == nil || p.GetUserCode() == "" || p.GetState() == "" {
		e.t.Fatalf("device start answered %v, want a pending device flow", resp)
	}
	return p
}

// check asks once how a flow is doing, waiting up to wait.
func (e *env) check(id, state string, wait time.Duration) (*rotavaultv1.ReauthenticateResponse, error) {
	resp, err := e.reauth(ctxT(e.t), id, &rotavaultv1.AuthorizationCheck{State: state, Wait: durationpb.New(wait)})
	if err == nil {
		e.checkResponseClean(resp)
	}
	return resp, err
}

// awaitOutcome checks with long waits until the flow leaves pending, and
// returns the activation or the error it ended with.
func (e *env) awaitOutcome(id, state string) (*rotavaultv1.FamilyActivated, error) {
	e.t.Helper()
	deadline := time.Now().Add(awaitDeadline + 10*time.Second)
	for time.Now().Before(deadline) {
		resp, err := e.check(id, state, 5*time.Second)
		if err != nil {
			return nil, err
		}
		if act := resp.GetFamilyActivated(); act != nil {
			return act, nil
		}
	}
	e.t.Fatalf("flow %s still pending after %s", id, awaitDeadline)
	return nil, nil
}

// checkResponseClean fails when an RPC answer carries any secret the
// simulator issued or saw (the device code above all).
func (e *env) checkResponseClean(m proto.Message) {
	e.t.Helper()
	raw, err := protojson.Marshal(m)
	if err != nil {
		e.t.Fatal(err)
	}
	checkNoSecrets(e.t, e.sim.Secrets(), map[string]string{"RPC answer": string(raw)})
}

// approveInBrowser is the user entering the code at the provider's
// verification page and approving, as a person's browser does.
func approveInBrowser(t *testing.T, verificationURI, userCode, action string) {
	t.Helper()
	resp, err := http.PostForm(verificationURI, url.Values{"user_code": {userCode}, "action": {action}})
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("verification page answered %s", resp.Status)
	}
}

func (e *env) createCredential(id string, spec *rotavaultv1.CredentialSpec) {
	e.t.Helper()
	if _, err := e.admin.CreateCredential(ctxT(e.t), &rotavaultv1.CreateCredentialRequest{CredentialId: id, Spec: spec}); err != nil {
		e.t.Fatalf("create %s: %v", id, err)
	}
}

// rfc8628Spec is a generic OAuth 2.0 credential of the simulator's app in
// its RFC 8628 dialect.
func (e *env) rfc8628Spec(scopes ...string) *rotavaultv1.CredentialSpec {
	return &rotavaultv1.CredentialSpec{
		ProviderKind:           rotavaultv1.ProviderKind_PROVIDER_KIND_OAUTH2,
		TokenUrl:               e.sim.URL() + "/services/oauth2/token",
		DeviceAuthorizationUrl: e.sim.URL() + providersim.DeviceAuthorizationPath,
		ClientId:               simClientID,
		ClientSecret:           simClientSecret,
		Scopes:                 scopes,
		AccessTokenLifetime:    durationpb.New(accessLifetime),
	}
}

// Salesforce's own device flow end to end: the user approves at the
// provider's verification page, the server (which polls on its own) installs
// the family, consumers get tokens and watchers a FAMILY_ACTIVATED notice.
func TestDeviceFlowSalesforce(t *testing.T) {
	e := newEnv(t, deviceOptions(envOptions{}))
	e.createCredential("acme", e.salesforceSpec())
	stream, _ := e.watch(ctxT(t), "", "acme")

	p := e.startDevice("acme")
	if p.GetVerificationUri() != e.sim.URL()+providersim.VerificationPath || p.GetInterval().AsDuration() != deviceInterval ||
		p.GetVerificationUriComplete() != "" {
		t.Fatalf("pending %v: want the simulator's verification page, its 1s interval, no complete URI (Salesforce has none)", p)
	}
	if left := time.Until(p.GetExpireTime().AsTime()); left < 9*time.Minute || left > 11*time.Minute {
		t.Errorf("expires in %s, want Salesforce's 10 minutes", left)
	}
	again, err := e.check("acme", p.GetState(), 0)
	if err != nil || again.GetDeviceAuthorizationPending().GetUserCode() != p.GetUserCode() {
		t.Fatalf("check before approval: %v %v, want the same pending flow", again, err)
	}

	approveInBrowser(t, p.GetVerificationUri(), p.GetUserCode(), "approve")
	act, err := e.awaitOutcome("acme", p.GetState())
	if err != nil {
		t.Fatalf("device flow: %v", err)
	}
	tok := e.token("acme")
	if tok.GetFamilyId() != act.GetFamilyId() || !e.sim.AccessTokenActive(tok.GetAccessToken()) {
		t.Fatalf("token of family %s (active at the provider: %v), want family %s", tok.GetFamilyId(), e.sim.AccessTokenActive(tok.GetAccessToken()), act.GetFamilyId())
	}
	n := nextNotice(t, stream)
	if n.GetKind() != rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_ACTIVATED || n.GetFamilyId() != act.GetFamilyId() {
		t.Fatalf("notice %v, want FAMILY_ACTIVATED for %s", n, act.GetFamilyId())
	}
	if st := e.sim.Stats(); st.DeviceTokenExchanges != 1 || st.DeviceSlowDowns != 0 {
		t.Errorf("provider stats %+v: want one exchange and no poll faster than the interval", st)
	}
	// The outcome stays answerable for a while, and the flow cannot be
	// completed twice.
	if again, err := e.check("acme", p.GetState(), 0); err != nil || again.GetFamilyActivated().GetFamilyId() != act.GetFamilyId() {
		t.Fatalf("check after completion: %v %v", again, err)
	}
}

// RFC 8628 for generic providers, with verification_uri_complete; and a
// grant without refresh token is refused with a clear reason, leaving the
// credential as it was.
func TestDeviceFlowRFC8628(t *testing.T) {
	e := newEnv(t, deviceOptions(envOptions{}))
	e.createCredential("generic", e.rfc8628Spec("api", "refresh_token"))
	p := e.startDevice("generic")
	if !strings.Contains(p.GetVerificationUriComplete(), "user_code=") {
		t.Fatalf("pending %v: want RFC 8628's verification_uri_complete", p)
	}
	if err := e.sim.ApproveDevice(p.GetUserCode()); err != nil {
		t.Fatal(err)
	}
	act, err := e.awaitOutcome("generic", p.GetState())
	if err != nil {
		t.Fatalf("device flow: %v", err)
	}
	if tok := e.token("generic"); tok.GetFamilyId() != act.GetFamilyId() {
		t.Fatalf("token of family %s, want %s", tok.GetFamilyId(), act.GetFamilyId())
	}

	t.Run("grant without refresh token", func(t *testing.T) {
		e.createCredential("no-offline", e.rfc8628Spec("api"))
		p := e.startDevice("no-offline")
		if err := e.sim.ApproveDevice(p.GetUserCode()); err != nil {
			t.Fatal(err)
		}
		_, err := e.awaitOutcome("no-offline", p.GetState())
		wantCode(t, err, codes.FailedPrecondition, server.ReasonAuthorizationFailed)
		if !strings.Contains(err.Error(), "no refresh token") {
			t.Errorf("message %q does not say why", err)
		}
		_, err = e.vault.GetAccessToken(ctxT(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "no-offline"})
		wantCode(t, err, codes.FailedPrecondition, server.ReasonReauthenticationRequired)
	})
}

// A denial ends the flow; the family in place is untouched.
func TestDeviceFlowDenied(t *testing.T) {
	e := newEnv(t, deviceOptions(envOptions{}))
	e.installSalesforce("acme")
	before := e.token("acme")
	p := e.startDevice("acme")
	approveInBrowser(t, p.GetVerificationUri(), p.GetUserCode(), "deny")
	_, err := e.awaitOutcome("acme", p.GetState())
	wantCode(t, err, codes.FailedPrecondition, server.ReasonAuthorizationDenied)
	if after := e.token("acme"); after.GetFamilyId() != before.GetFamilyId() || after.GetGeneration() != before.GetGeneration() {
		t.Fatalf("a denied flow changed the family: %s/%d, was %s/%d", after.GetFamilyId(), after.GetGeneration(), before.GetFamilyId(), before.GetGeneration())
	}
	if st := e.sim.Stats(); st.DeviceTokenExchanges != 0 {
		t.Errorf("%d device exchanges after a denial", st.DeviceTokenExchanges)
	}
}

// Flows expire on Rotavault's clock and on the provider's.
func TestDeviceFlowExpired(t *testing.T) {
	t.Run("past the flow's expiry", func(t *testing.T) {
		e := newEnv(t, deviceOptions(envOptions{}))
		e.createCredential("acme", e.salesforceSpec())
		p := e.startDevice("acme")
		e.clock.advance(11 * time.Minute)
		_, err := e.check("acme", p.GetState(), 0)
		wantCode(t, err, codes.FailedPrecondition, server.ReasonAuthorizationExpired)
	})
	t.Run("the provider no longer accepts the device code", func(t *testing.T) {
		e := newEnv(t, deviceOptions(envOptions{sim: providersim.Config{DeviceCodeLifetime: 2 * time.Second}}))
		e.createCredential("acme", e.salesforceSpec())
		p := e.startDevice("acme")
		_, err := e.awaitOutcome("acme", p.GetState())
		wantCode(t, err, codes.FailedPrecondition, server.ReasonAuthorizationExpired)
		if err := e.sim.ApproveDevice(p.GetUserCode()); err == nil {
			t.Error("the provider still accepted the user code")
		}
	})
}

// Salesforce issues refresh tokens only for refresh_token/offline_access: a
// device flow without them is refused before it starts, and nothing changes.
func TestDeviceFlowScopeRefusal(t *testing.T) {
	e := newEnv(t, deviceOptions(envOptions{}))
	e.createCredential("acme", e.salesforceSpec())
	_, err := e.reauth(ctxT(t), "acme", &rotavaultv1.DeviceAuthorizationStart{Scopes: []string{"api"}})
	wantCode(t, err, codes.InvalidArgument, "")
	if !strings.Contains(err.Error(), "refresh_token") {
		t.Errorf("message %q does not name the missing scope", err)
	}
	if n := e.sim.Stats().DeviceAuthorizations; n != 0 {
		t.Errorf("the provider saw %d device authorizations", n)
	}
	if keys, err := e.store.List(ctxT(t), "flows/"); err != nil || len(keys) != 0 {
		t.Errorf("flows stored after a refusal: %v %v", keys, err)
	}
	// A generic provider without a device endpoint is refused the same way.
	e.createCredential("generic", &rotavaultv1.CredentialSpec{ProviderKind: rotavaultv1.ProviderKind_PROVIDER_KIND_OAUTH2,
		TokenUrl: e.sim.URL() + "/services/oauth2/token", ClientId: simClientID, Scopes: []string{"offline"}})
	_, err = e.reauth(ctxT(t), "generic", &rotavaultv1.DeviceAuthorizationStart{})
	wantCode(t, err, codes.InvalidArgument, "")
}

// Replica A starts the flow and polls; A stops before the user approves;
// replica B takes the poll over and completes it: one exchange at the
// provider, one family, one activation notice.
func TestDevicePollerTakeover(t *testing.T) {
	a := newEnv(t, deviceOptions(envOptions{vault: vaulttest.StartDev(t)}))
	b := a.replica()
	a.createCredential("acme", a.salesforceSpec())
	stream, _ := b.watch(ctxT(t), "", "acme")

	p := a.startDevice("acme")
	polled := a.sim.Stats().TokenRequests + 1
	if err := a.sim.WaitForTokenRequests(ctxT(t), polled); err != nil {
		t.Fatalf("replica A never polled: %v", err)
	}
	a.stop()
	if err := a.sim.ApproveDevice(p.GetUserCode()); err != nil {
		t.Fatal(err)
	}
	act, err := b.awaitOutcome("acme", p.GetState())
	if err != nil {
		t.Fatalf("device flow on replica B: %v", err)
	}
	if tok := b.token("acme"); tok.GetFamilyId() != act.GetFamilyId() {
		t.Fatalf("token of family %s, want %s", tok.GetFamilyId(), act.GetFamilyId())
	}
	if n := nextNotice(t, stream); n.GetKind() != rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_ACTIVATED || n.GetFamilyId() != act.GetFamilyId() {
		t.Fatalf("notice %v, want FAMILY_ACTIVATED for %s", n, act.GetFamilyId())
	}
	if st := a.sim.Stats(); st.DeviceTokenExchanges != 1 {
		t.Errorf("provider exchanges %d, want exactly 1", st.DeviceTokenExchanges)
	}
	installs := 0
	for _, dir := range []string{a.dataDir, b.dataDir} {
		raw, err := os.ReadFile(filepath.Join(dir, "audit.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		installs += strings.Count(string(raw), `"action":"reauthenticated"`)
	}
	if installs != 1 {
		t.Errorf("%d families installed across the replicas, want 1", installs)
	}
}

// The device authorization URL is a generic provider's field: validated,
// returned, changeable through the update mask, refused for Salesforce.
func TestDeviceAuthorizationURLInSpec(t *testing.T) {
	e := newEnv(t, envOptions{})
	spec := e.salesforceSpec()
	spec.DeviceAuthorizationUrl = "https://login.example/device"
	_, err := e.admin.CreateCredential(ctxT(t), &rotavaultv1.CreateCredentialRequest{CredentialId: "sf", Spec: spec})
	wantCode(t, err, codes.InvalidArgument, "")

	e.createCredential("generic", e.rfc8628Spec("offline"))
	got, err := e.admin.GetCredential(ctxT(t), &rotavaultv1.GetCredentialRequest{CredentialId: "generic"})
	if err != nil || got.GetCredential().GetSpec().GetDeviceAuthorizationUrl() != e.sim.URL()+providersim.DeviceAuthorizationPath {
		t.Fatalf("get: %v %v", got, err)
	}
	update := func(u string) error {
		_, err := e.admin.UpdateCredential(ctxT(t), &rotavaultv1.UpdateCredentialRequest{
			CredentialId: "generic",
			Spec:         &rotavaultv1.CredentialSpec{DeviceAuthorizationUrl: u},
			UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"device_authorization_url"}},
		})
		return err
	}
	wantCode(t, update("http://device.example/authorize"), codes.InvalidArgument, "")
	if err := update("https://as.example/device"); err != nil {
		t.Fatal(err)
	}
	got, err = e.admin.GetCredential(ctxT(t), &rotavaultv1.GetCredentialRequest{CredentialId: "generic"})
	if err != nil || got.GetCredential().GetSpec().GetDeviceAuthorizationUrl() != "https://as.example/device" {
		t.Fatalf("after the update: %v %v", got, err)
	}
}
