package broker

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/detect"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/fositeserver"
	"github.com/rotavault/rotavault/internal/syncbuf"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/store/memstore"
)

// basicOnlyFosite is a real fosite server whose client allows only HTTP
// Basic at the token endpoint, with a refresh token issued to it.
func basicOnlyFosite(ctx context.Context, t *testing.T) (fs *fositeserver.Server, refreshToken string) {
	t.Helper()
	fs, err := fositeserver.Start(fositeserver.Config{TokenEndpointAuthMethod: "client_secret_basic"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fs.Close() })
	fs.AddClient(blindClientID, blindClientSecret, []string{blindRedirect})
	rt, err := fs.IssueRefreshToken(ctx, blindClientID, blindClientSecret, blindRedirect, []string{"offline", "api"})
	if err != nil {
		t.Fatal(err)
	}
	return fs, rt
}

// A credential naming only fosite's issuer gets its endpoints and, for a
// client that allows only HTTP Basic, the method from the metadata (Basic,
// listed there): the import's refresh succeeds, and periodic introspection
// is active through the discovered endpoint.
func TestIssuerDiscoveryFillsEndpointsAndBasicAuth(t *testing.T) {
	ctx := context.Background()
	fs, rt := basicOnlyFosite(ctx, t)
	b := newTestBroker(t, memstore.New(), option.WithSchedulerInterval(time.Hour))
	spec := credspec.Spec{ProviderKind: credspec.ProviderOAuth2, Issuer: fs.URL(), ClientID: blindClientID, ClientSecret: blindClientSecret, Scopes: []string{"offline", "api"}}
	if _, err := b.Credentials().Create(ctx, "g", spec); err != nil {
		t.Fatalf("create with only an issuer: %v", err)
	}
	if _, err := b.ImportRefreshToken(ctx, "g", rt); err != nil {
		t.Fatalf("import at a Basic-only client: %v", err)
	}
	c, err := b.Credentials().Get(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	d := c.Spec.Discovered
	if d == nil || d.TokenURL != fs.TokenURL() || d.IntrospectionURL != fs.IntrospectionURL() || d.ClientAuth != credspec.ClientAuthSecretBasic || d.URL != fs.MetadataURL() {
		t.Fatalf("discovered %+v, want fosite's endpoints and client_secret_basic from %s", d, fs.MetadataURL())
	}
	if c.Status != family.StatusActive || c.EarlyDetection != detect.StateActive {
		t.Fatalf("status %s, early detection %s (%s); want active, active", c.Status, c.EarlyDetection, c.EarlyDetectionDetail)
	}
	if s := b.Stats(); s.Discoveries != 1 || s.DiscoveryFailures != 0 {
		t.Fatalf("discoveries %d, failures %d; want 1, 0", s.Discoveries, s.DiscoveryFailures)
	}
}

// Without an issuer the default (form fields) meets fosite's Basic-only
// client: the caller's error names the method that was used, and the log
// carries fosite's own description of the problem, quoted.
func TestClientRejectedNamesTheAuthMethod(t *testing.T) {
	ctx := context.Background()
	fs, rt := basicOnlyFosite(ctx, t)
	var logs syncbuf.Buffer
	b := newTestBroker(t, memstore.New(), option.WithSchedulerInterval(time.Hour), option.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	spec := credspec.Spec{ProviderKind: credspec.ProviderOAuth2, TokenURL: fs.TokenURL(), ClientID: blindClientID, ClientSecret: blindClientSecret, Scopes: []string{"offline", "api"}}
	if _, err := b.Credentials().Create(ctx, "g", spec); err != nil {
		t.Fatal(err)
	}
	_, err := b.ImportRefreshToken(ctx, "g", rt)
	if !errors.Is(err, brokererr.ErrClientRejected) || !strings.Contains(err.Error(), "client_secret_post") {
		t.Fatalf("import: %v, want ErrClientRejected naming client_secret_post", err)
	}
	line := logs.WaitFor(t, "provider refused the client", 5*time.Second)
	if !strings.Contains(line, "client_auth_method=client_secret_post") || !strings.Contains(line, "provider_description=") || !strings.Contains(line, "client_secret_basic") {
		t.Fatalf("log %q: want the method used and fosite's description (which names client_secret_basic)", line)
	}
	if strings.Contains(logs.String(), blindClientSecret) || strings.Contains(logs.String(), rt) {
		t.Fatal("a secret reached the log")
	}
}

// The metadata is fetched again on the discovery interval: a provider that
// moves an endpoint is followed, and the stored document is rewritten only
// when it changed. A document that turns bad keeps the stored one.
func TestIssuerMetadataRefetched(t *testing.T) {
	ctx := context.Background()
	sim := startMetadataSim(t)
	b := newTestBroker(t, memstore.New(), option.WithSchedulerInterval(time.Hour), option.WithDiscoveryInterval(20*time.Millisecond))
	spec := credspec.Spec{ProviderKind: credspec.ProviderOAuth2, Issuer: sim.URL(), ClientID: "sim", ClientSecret: "sim-secret"}
	if _, err := b.Credentials().Create(ctx, "s", spec); err != nil {
		t.Fatal(err)
	}
	moved := "http://127.0.0.1:1/introspect-moved"
	sim.SetMetadataOverride(map[string]any{"introspection_endpoint": moved})
	await(t, "the moved introspection endpoint stored", func() bool {
		c, err := b.Credentials().Get(ctx, "s")
		return err == nil && c.Spec.Discovered != nil && c.Spec.Discovered.IntrospectionURL == moved
	})
	sim.SetMetadataOverride(map[string]any{"issuer": "http://127.0.0.1:1", "introspection_endpoint": "http://127.0.0.1:2/x"})
	failed := b.Stats().DiscoveryFailures
	await(t, "two refused refetches", func() bool { return b.Stats().DiscoveryFailures >= failed+2 })
	c, err := b.Credentials().Get(ctx, "s")
	if err != nil || c.Spec.Discovered.IntrospectionURL != moved {
		t.Fatalf("after a document for another issuer: %+v, %v; want the stored one kept", c.Spec.Discovered, err)
	}
}

// An issuer whose document is refused fails the creation, saying why.
func TestIssuerDiscoveryFailureRefusesCreation(t *testing.T) {
	ctx := context.Background()
	sim := startMetadataSim(t)
	sim.SetMetadataOverride(map[string]any{"issuer": "http://127.0.0.1:1"})
	b := newTestBroker(t, memstore.New(), option.WithSchedulerInterval(time.Hour))
	_, err := b.Credentials().Create(ctx, "s", credspec.Spec{ProviderKind: credspec.ProviderOAuth2, Issuer: sim.URL(), ClientID: "sim"})
	var ie *brokererr.InvalidArgumentError
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), strconv.Quote("http://127.0.0.1:1")) {
		t.Fatalf("create: %v, want an invalid argument naming the other issuer", err)
	}
}

// startMetadataSim starts a simulator, whose OpenID document names it as
// the issuer.
func startMetadataSim(t *testing.T) *providersim.Server {
	t.Helper()
	sim, err := providersim.Start(providersim.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	return sim
}

// Setting the issuer on an existing credential discovers its metadata;
// clearing it drops the metadata, and the configured token URL serves alone.
func TestUpdateIssuerRediscovers(t *testing.T) {
	ctx := context.Background()
	sim := startMetadataSim(t)
	b := newTestBroker(t, memstore.New(), option.WithSchedulerInterval(time.Hour))
	spec := credspec.Spec{ProviderKind: credspec.ProviderOAuth2, TokenURL: sim.URL() + "/services/oauth2/token", ClientID: "sim"}
	if _, err := b.Credentials().Create(ctx, "s", spec); err != nil {
		t.Fatal(err)
	}
	c, err := b.Credentials().Update(ctx, "s", []credspec.Field{credspec.FieldIssuer}, credspec.Spec{Issuer: sim.URL()})
	if err != nil || c.Spec.Discovered == nil || c.Spec.Discovered.IntrospectionURL != sim.URL()+"/services/oauth2/introspect" {
		t.Fatalf("after setting the issuer: %+v, %v; want the simulator's metadata", c.Spec.Discovered, err)
	}
	if c.EarlyDetection == detect.StateNoEndpoint {
		t.Fatalf("early detection %s with a discovered introspection endpoint", c.EarlyDetection)
	}
	c, err = b.Credentials().Update(ctx, "s", []credspec.Field{credspec.FieldIssuer}, credspec.Spec{})
	if err != nil || c.Spec.Discovered != nil || c.EarlyDetection != detect.StateNoEndpoint {
		t.Fatalf("after clearing the issuer: %+v, %s, %v; want no metadata, no introspection endpoint", c.Spec.Discovered, c.EarlyDetection, err)
	}
}
