package broker

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/store/memstore"
)

// An authorization-code flow whose code exchange meets a client the
// provider refuses (fosite allowing only HTTP Basic, the credential sending
// form fields) fails as the client rejected, naming the method used — not
// as a bad code the caller should fetch again — and the flow's stored
// outcome says the same to whoever checks it.
func TestCodeExchangeWithRejectedClientNamesTheAuthMethod(t *testing.T) {
	ctx := context.Background()
	fs, _ := basicOnlyFosite(ctx, t)
	b := newTestBroker(t, memstore.New(), option.WithSchedulerInterval(time.Hour))
	spec := credspec.Spec{ProviderKind: credspec.ProviderOAuth2, TokenURL: fs.TokenURL(), AuthorizeURL: fs.AuthorizeURL(),
		ClientID: blindClientID, ClientSecret: blindClientSecret, Scopes: []string{"offline", "api"}}
	if _, err := b.Credentials().Create(ctx, "g", spec); err != nil {
		t.Fatal(err)
	}
	pending, err := b.Flows().StartAuthorization(ctx, "g", blindRedirect, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Flows().CompleteAuthorization(ctx, "g", pending.State, "code-the-provider-never-checks")
	if !errors.Is(err, brokererr.ErrClientRejected) || !strings.Contains(err.Error(), "client_secret_post") {
		t.Fatalf("complete: %v, want ErrClientRejected naming client_secret_post", err)
	}
	_, err = b.Flows().CheckAuthorization(ctx, "g", pending.State, 0)
	if err == nil || !strings.Contains(err.Error(), "client_secret_post") {
		t.Fatalf("check: %v, want the flow's outcome naming client_secret_post", err)
	}
}

// A device flow started with a client secret the provider refuses fails as
// the client rejected, naming the method the request used.
func TestDeviceStartWithRejectedClientNamesTheAuthMethod(t *testing.T) {
	ctx := context.Background()
	sim := startSim(t, providersim.Config{})
	b := newTestBroker(t, memstore.New(), option.WithSchedulerInterval(time.Hour))
	spec := credspec.Spec{ProviderKind: credspec.ProviderSalesforce, BaseURL: sim.URL(), ClientID: "c", ClientSecret: "wrong-secret", Scopes: []string{"api", "refresh_token"}}
	if _, err := b.Credentials().Create(ctx, "d", spec); err != nil {
		t.Fatal(err)
	}
	_, err := b.Flows().StartDeviceAuthorization(ctx, "d", nil)
	if !errors.Is(err, brokererr.ErrClientRejected) || !strings.Contains(err.Error(), "client_secret_post") {
		t.Fatalf("device start: %v, want ErrClientRejected naming client_secret_post", err)
	}
}
