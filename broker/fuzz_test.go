package broker

import (
	"errors"
	"net"
	"net/url"
	"strings"
	"testing"

	"github.com/rotavault/rotavault/broker/authflow"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/internal/credid"
	"github.com/rotavault/rotavault/store"
)

// FuzzRequestValidation checks the validators every request passes through:
// no panic; an accepted credential id always makes store keys inside the
// store's grammar (it can never escape a backend's prefix); an accepted
// endpoint URL is https, or http on loopback; an accepted flow state is one
// key segment. (Cursors: the notice package's FuzzCursorDecode.)
func FuzzRequestValidation(f *testing.F) {
	for _, seed := range [][3]string{
		{"acme", "https://acme.my.salesforce.com", "api refresh_token"},
		{"../etc", "http://evil.example.com/token", "api"},
		{"a/b", "http://127.0.0.1:8080/x", ""},
		{"A", "ftp://x", "a b"},
		{strings.Repeat("a", 129), "https://u:p@x.com", "\x00"},
		{"acme.prod_1-x", "http://[::1]:1/", "offline_access"},
		{"acme", "http://localhost.evil.com/", "refresh_token"},
	} {
		f.Add(seed[0], seed[1], seed[2])
	}
	f.Fuzz(func(t *testing.T, id, rawURL, scope string) {
		if credid.Validate(id) == nil {
			cred := &family.Credential{ID: id, Incarnation: family.RandomID(8)}
			for key, parts := range map[string]int{family.CredentialKey(id): 2, cred.FamilyKey(): 3} {
				if err := store.ValidateKey(key); err != nil {
					t.Fatalf("accepted id %q makes an invalid store key: %v", id, err)
				}
				if segs := strings.Split(key, "/"); len(segs) != parts || segs[1] != id {
					t.Fatalf("id %q escapes its key space: %q", id, key)
				}
			}
		}
		// The state in a browser's callback names a store key: an accepted
		// one must stay a single segment under flows/.
		if authflow.IsFlowState(id) {
			if key := authflow.RecordKey(id); store.ValidateKey(key) != nil || strings.Count(key, "/") != 1 {
				t.Fatalf("accepted state %q makes the key %q", id, key)
			}
		}
		if credspec.ValidateEndpointURL(rawURL) == nil {
			u, err := url.Parse(rawURL)
			if err != nil {
				t.Fatalf("accepted an unparsable URL %q", rawURL)
			}
			host := u.Hostname()
			ip := net.ParseIP(host)
			loopback := host == "localhost" || (ip != nil && ip.IsLoopback())
			if u.Scheme != "https" && !(u.Scheme == "http" && loopback) {
				t.Fatalf("accepted %q (scheme %q, host %q)", rawURL, u.Scheme, host)
			}
		}
		spec := credspec.Spec{ProviderKind: credspec.ProviderSalesforce, BaseURL: "https://login.salesforce.com", ClientID: "x", Scopes: []string{scope}}
		if err := spec.Validate(); err != nil {
			var inv *brokererr.InvalidArgumentError
			if !errors.As(err, &inv) {
				t.Fatalf("validation error of the wrong kind: %v", err)
			}
		}
	})
}
