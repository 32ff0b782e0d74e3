package vaultstore_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/rotavault/rotavault/internal/vaulttest"
	"github.com/rotavault/rotavault/vaultstore"
)

// capabilityList matches a policy rule's capability list; its first group
// is the quoted names.
var capabilityList = regexp.MustCompile(`capabilities\s*=\s*\[([^\]]*)\]`)

// rulePath matches a rule's path; its first group is the path.
var rulePath = regexp.MustCompile(`path\s+"([^"]+)"`)

// policyVariant is a policy file with one capability of one rule removed.
type policyVariant struct {
	name       string // rule index and capability, for the test's name
	path       string // the rule's
	capability string // the one removed
	hcl        string
}

// policyWithout is every variant of hcl with one capability removed.
func policyWithout(t *testing.T, hcl string) []policyVariant {
	t.Helper()
	var variants []policyVariant
	lists := capabilityList.FindAllStringSubmatchIndex(hcl, -1)
	for i, m := range lists {
		names := strings.Split(hcl[m[2]:m[3]], ",")
		path := ""
		if p := rulePath.FindAllStringSubmatch(hcl[:m[0]], -1); len(p) > 0 {
			path = p[len(p)-1][1]
		}
		for j := range names {
			kept := append(append([]string{}, names[:j]...), names[j+1:]...)
			capability := strings.Trim(strings.TrimSpace(names[j]), `"`)
			variants = append(variants, policyVariant{
				name:       fmt.Sprintf("rule %d without %s", i+1, capability),
				path:       path,
				capability: capability,
				hcl:        hcl[:m[2]] + strings.Join(kept, ",") + hcl[m[3]:],
			})
		}
	}
	if len(lists) == 0 || len(variants) == 0 {
		t.Fatalf("no capability found in the policy:\n%s", hcl)
	}
	return variants
}

// TestPolicyIsLeastPrivilege shows the other half of the policy files'
// claim (the first half: every Vault-backed test runs with a token that has
// only them): start-up refuses a token that lacks any single capability they
// grant, naming it — but read on the mount's configuration, without which
// it starts and gives each new record metadata of its own (one write more).
// A capability the store does not need could not be removed without a
// failure here, so it would not be in the files.
func TestPolicyIsLeastPrivilege(t *testing.T) {
	srv := vaulttest.StartDev(t)
	root := srv.RootClient(t)
	ctx := context.Background()
	kv, err := vaulttest.Policy(vaulttest.PolicyName)
	if err != nil {
		t.Fatal(err)
	}
	transit, err := vaulttest.Policy(vaulttest.TransitPolicyName)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		file       string
		hcl        string
		policies   func(variant string) []string // the token's, with the variant's name
		transitKey string
	}{
		{vaulttest.PolicyFile(vaulttest.PolicyName), kv, func(v string) []string { return []string{v} }, ""},
		{vaulttest.PolicyFile(vaulttest.TransitPolicyName), transit, func(v string) []string { return []string{vaulttest.PolicyName, v} }, vaulttest.TransitKey},
	}
	n := 0
	for _, c := range cases {
		for _, v := range policyWithout(t, c.hcl) {
			t.Run(c.file+" "+v.name, func(t *testing.T) {
				n++
				name := fmt.Sprintf("variant-%d", n)
				if err := root.Sys().PutPolicy(name, v.hcl); err != nil {
					t.Fatal(err)
				}
				client, counter := srv.CountingClient(t)
				client.SetToken(srv.NewToken(t, c.policies(name)...))
				s, err := vaultstore.New(ctx, vaultstore.Config{Client: client, TransitKey: c.transitKey})
				if v.path == "secret/config" {
					// Optional: without it the store cannot know that the
					// mount covers every key, and gives each new record
					// metadata of its own — one write more.
					if err != nil {
						t.Fatalf("New without read on the mount's configuration = %v, want it to start", err)
					}
					defer s.Close()
					if writes, keyCAS := createCost(t, s, counter, srv.RootClient(t), "families/acme"); writes != 2 || !keyCAS {
						t.Fatalf("creation without read on the mount's configuration: %d writes, cas_required %v; want 2, true", writes, keyCAS)
					}
					return
				}
				if !errors.Is(err, vaultstore.ErrMissingPolicy) || !strings.Contains(err.Error(), v.capability+" on ") {
					t.Fatalf("New = %v, want ErrMissingPolicy naming %s", err, v.capability)
				}
			})
		}
	}
	// With the files as they are, start-up passes the same checks.
	for _, cfg := range []vaultstore.Config{
		{Client: srv.Client(t)},
		{Client: srv.TransitClient(t), TransitKey: vaulttest.TransitKey},
	} {
		s, err := vaultstore.New(ctx, cfg)
		if err != nil {
			t.Fatalf("New with the policy files (transit key %q) = %v", cfg.TransitKey, err)
		}
		_ = s.Close()
	}
}
