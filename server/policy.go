package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Role is what a caller may do with the credentials a rule names. Each role
// includes the ones below it.
type Role int

// The roles, weakest first.
const (
	// RoleConsumer reads access tokens and watches revocation notices.
	RoleConsumer Role = iota + 1
	// RoleOperator also re-authenticates (replaces the token family).
	RoleOperator
	// RoleAdmin may do everything, on every credential, including the
	// CredentialAdminService and server reflection.
	RoleAdmin
)

func (r Role) String() string {
	switch r {
	case RoleConsumer:
		return "consumer"
	case RoleOperator:
		return "operator"
	case RoleAdmin:
		return "admin"
	default:
		return fmt.Sprintf("Role(%d)", int(r))
	}
}

func parseRole(s string) (Role, error) {
	switch s {
	case "consumer":
		return RoleConsumer, nil
	case "operator":
		return RoleOperator, nil
	case "admin":
		return RoleAdmin, nil
	default:
		return 0, fmt.Errorf("unknown role %q: consumer, operator or admin", s)
	}
}

// Policy maps caller identities to roles on credentials. A caller's rights
// are the union of every rule matching its identity; no matching rule, no
// rights. Immutable once parsed, so it is shared freely and swapped whole
// on reload.
type Policy struct {
	rules []policyRule
}

type policyRule struct {
	identity string
	// prefix is set for an identity ending in "/*": it matches every
	// identity starting with the rest, slash included.
	prefix      bool
	role        Role
	credentials []string
	// maxWatchStreams, when positive, is how many WatchRevocations
	// streams each identity the rule matches may have open at once.
	maxWatchStreams int
}

// policyFile is the JSON form of a Policy; each rule is a policyFileRule.
type policyFile struct {
	Rules []json.RawMessage `json:"rules"`
}

type policyFileRule struct {
	Identity        string   `json:"identity"`
	Role            string   `json:"role"`
	Credentials     []string `json:"credentials"`
	MaxWatchStreams *int     `json:"max_watch_streams"`
}

// ParsePolicy parses a JSON policy:
//
//	{"rules": [
//	  {"identity": "spiffe://example.org/ns/payments/*", "role": "consumer", "credentials": ["salesforce-prod"]},
//	  {"identity": "dns:ops.example.org", "role": "operator", "credentials": ["*"], "max_watch_streams": 5000},
//	  {"identity": "spiffe://example.org/ns/platform/sa/rotavault-admin", "role": "admin"}
//	]}
//
// Unknown fields are errors: a misspelt key must not silently grant or
// withhold rights. So are keys in another case ("Role") and duplicate keys
// in any case, which encoding/json would take as the same field, the last
// one silently winning.
func ParsePolicy(data []byte) (*Policy, error) {
	var f policyFile
	if err := decodeStrict(data, &f); err != nil {
		return nil, fmt.Errorf("parse policy: %w", err)
	}
	p := &Policy{}
	for i, raw := range f.Rules {
		var r policyFileRule
		if err := decodeStrict(raw, &r); err != nil {
			return nil, fmt.Errorf("policy rule %d: %w", i+1, err)
		}
		role, err := parseRole(r.Role)
		if err != nil {
			return nil, fmt.Errorf("policy rule %d: %w", i+1, err)
		}
		rule := policyRule{identity: r.Identity, role: role, credentials: r.Credentials}
		if r.MaxWatchStreams != nil {
			if *r.MaxWatchStreams < 1 {
				return nil, fmt.Errorf("policy rule %d: max_watch_streams must be at least 1", i+1)
			}
			rule.maxWatchStreams = *r.MaxWatchStreams
		}
		if strings.HasSuffix(r.Identity, "*") {
			rule.prefix, rule.identity = true, strings.TrimSuffix(r.Identity, "*")
		}
		switch {
		case r.Identity == "" || r.Identity == "*":
			// A bare "*" would grant every authenticated caller; say so
			// explicitly by naming a prefix instead.
			return nil, fmt.Errorf("policy rule %d: identity must be an identity or a prefix ending in /*", i+1)
		case strings.Contains(rule.identity, "*"):
			return nil, fmt.Errorf("policy rule %d: identity %q: * is only allowed at the end", i+1, r.Identity)
		case rule.prefix && !strings.HasSuffix(rule.identity, "/"):
			// "…/ns/pay*" would also match "…/ns/payroll/…" and "ops*"
			// "ops.attacker.example": a prefix stops at a path segment.
			return nil, fmt.Errorf("policy rule %d: identity %q: a prefix must end in /* (whole path segments)", i+1, r.Identity)
		case role != RoleAdmin && len(r.Credentials) == 0:
			return nil, fmt.Errorf("policy rule %d: a %s rule must name credentials (ids, or \"*\" for all)", i+1, role)
		case role == RoleAdmin && r.Credentials != nil:
			// An admin may do everything on every credential: a list
			// would read as a restriction that does not exist.
			return nil, fmt.Errorf("policy rule %d: an admin rule covers every credential and takes no credentials list; use operator or consumer for some credentials", i+1)
		}
		for _, c := range r.Credentials {
			if c == "" || (c != "*" && strings.Contains(c, "*")) {
				return nil, fmt.Errorf("policy rule %d: credential %q: give an id or \"*\"", i+1, c)
			}
		}
		p.rules = append(p.rules, rule)
	}
	return p, nil
}

// decodeStrict decodes one JSON object into v, refusing unknown keys, keys
// that are not lower case and duplicate keys in any case, and trailing data.
// It checks the object's own keys; v's nested objects are checked by their
// own decodeStrict (policy rules are kept raw for that).
func decodeStrict(data []byte, v any) error {
	if err := checkKeys(data); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// checkKeys refuses an object whose keys are not all lower case and
// distinct. Values are skipped, not checked.
func checkKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil {
		return err
	} else if tok != json.Delim('{') {
		return errors.New("want a JSON object")
	}
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, _ := tok.(string)
		switch lower := strings.ToLower(key); {
		case key != lower:
			return fmt.Errorf("key %q: keys are lower case (%q)", key, lower)
		case seen[key]:
			return fmt.Errorf("key %q appears twice", key)
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return err
		}
	}
	return nil
}

// LoadPolicyFile reads and parses a policy file.
func LoadPolicyFile(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	p, err := ParsePolicy(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// Policy makes a *Policy its own PolicySource, for a policy that never
// changes.
func (p *Policy) Policy() *Policy { return p }

func (r *policyRule) matches(identity string) bool {
	if r.prefix {
		return strings.HasPrefix(identity, r.identity)
	}
	return identity == r.identity
}

func (r *policyRule) covers(credentialID string) bool {
	if r.role == RoleAdmin {
		return true
	}
	if credentialID == "" {
		return false
	}
	for _, c := range r.credentials {
		if c == "*" || c == credentialID {
			return true
		}
	}
	return false
}

// Allows reports whether identity holds at least role on credentialID. An
// empty credentialID stands for a call naming no credential (listing,
// reflection): only admins may make those.
func (p *Policy) Allows(identity string, role Role, credentialID string) bool {
	if p == nil || identity == "" {
		return false
	}
	for i := range p.rules {
		r := &p.rules[i]
		if r.role >= role && r.matches(identity) && r.covers(credentialID) {
			return true
		}
	}
	return false
}

// MaxWatchStreams is the largest max_watch_streams among the rules matching
// identity that set one; ok is false when none does (the server's default
// applies).
func (p *Policy) MaxWatchStreams(identity string) (n int, ok bool) {
	if p == nil {
		return 0, false
	}
	for i := range p.rules {
		r := &p.rules[i]
		if r.maxWatchStreams > 0 && r.matches(identity) {
			n, ok = max(n, r.maxWatchStreams), true
		}
	}
	return n, ok
}

// AllowsSome reports whether identity holds at least role on any
// credential: enough to open a watch on "all I may see", which is then
// filtered notice by notice.
func (p *Policy) AllowsSome(identity string, role Role) bool {
	if p == nil || identity == "" {
		return false
	}
	for i := range p.rules {
		r := &p.rules[i]
		if r.role >= role && r.matches(identity) {
			return true
		}
	}
	return false
}
