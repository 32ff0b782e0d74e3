package integration

import (
	"errors"
	"testing"

	"github.com/rotavault/rotavault/client"
)

func TestGoClient(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.installSalesforce("acme")
	c, err := client.New(e.conn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	tok, err := c.Token(ctxT(t), "acme")
	if err != nil {
		t.Fatal(err)
	}
	if !e.sim.AccessTokenActive(tok.AccessToken) || tok.InstanceURL != e.sim.URL() || tok.Generation != 1 {
		t.Fatalf("token = %+v", tok)
	}

	// The resource server refused it: a report gets a newer token once the
	// provider confirms the token is dead.
	if !e.sim.RevokeFamilyOf(tok.AccessToken) {
		t.Fatal("simulator did not revoke")
	}
	_, err = c.Token(ctxT(t), "acme", client.WithRejected(tok))
	if !errors.Is(err, client.ErrReauthenticationRequired) {
		t.Fatalf("after the family was revoked at the provider: %v, want ErrReauthenticationRequired", err)
	}
}
