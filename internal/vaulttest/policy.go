package vaulttest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	vault "github.com/hashicorp/vault/api"
)

// Names under which every test server holds Rotavault's policies, and the
// Transit key the Transit policy is written for.
const (
	PolicyName        = "rotavault"
	TransitPolicyName = "rotavault-transit"
	TransitMount      = "transit"
	TransitKey        = "rotavault"
)

// PolicyFile is the file in the repository that an operator installs as
// policy name (PolicyName or TransitPolicyName).
func PolicyFile(name string) string {
	if name == TransitPolicyName {
		return "deploy/vault-policy-transit.hcl"
	}
	return "deploy/vault-policy.hcl"
}

// Policy returns the HCL of PolicyFile(name).
func Policy(name string) (string, error) {
	raw, err := os.ReadFile(filepath.Join(repoRoot(), PolicyFile(name)))
	if err != nil {
		return "", fmt.Errorf("vaulttest: policy %s: %w", name, err)
	}
	return string(raw), nil
}

// provision sets s up as an operator would for Rotavault (see Server) and
// creates Token and TransitToken.
func (s *Server) provision(t testing.TB) {
	t.Helper()
	root := s.RootClient(t)
	for _, name := range []string{PolicyName, TransitPolicyName} {
		hcl, err := Policy(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := root.Sys().PutPolicy(name, hcl); err != nil {
			t.Fatalf("vaulttest: write policy %s: %v", name, err)
		}
	}
	// The mount as README's "HashiCorp Vault backend" recommends: every key
	// check-and-set only (and Vault's default 10 versions), so the store
	// writes no metadata per record (tests of the other case set it back).
	if _, err := root.Logical().Write("secret/config", map[string]any{"cas_required": true}); err != nil {
		t.Fatalf("vaulttest: configure secret/: %v", err)
	}
	if err := root.Sys().Mount(TransitMount, &vault.MountInput{Type: "transit"}); err != nil {
		t.Fatalf("vaulttest: enable transit: %v", err)
	}
	if _, err := root.Logical().Write(TransitMount+"/keys/"+TransitKey, nil); err != nil {
		t.Fatalf("vaulttest: create the transit key: %v", err)
	}
	s.Token = s.NewToken(t, PolicyName)
	s.TransitToken = s.NewToken(t, PolicyName, TransitPolicyName)
	// The tokens really are limited: nothing outside Rotavault's path.
	for _, tok := range []string{s.Token, s.TransitToken} {
		caps, err := s.clientWith(t, tok).Sys().CapabilitiesSelf("secret/data/not-rotavault")
		if err != nil || len(caps) != 1 || caps[0] != "deny" {
			t.Fatalf("vaulttest: a policy token has %v (%v) outside Rotavault's path", caps, err)
		}
	}
}

// NewToken creates a renewable token (1 h) that carries exactly policies,
// without Vault's default policy.
func (s *Server) NewToken(t testing.TB, policies ...string) string {
	t.Helper()
	tok, err := s.RootClient(t).Auth().Token().Create(&vault.TokenCreateRequest{
		Policies: policies, NoDefaultPolicy: true, TTL: "1h", Renewable: new(true),
	})
	if err != nil {
		t.Fatalf("vaulttest: create a token with %v: %v", policies, err)
	}
	return tok.Auth.ClientToken
}
