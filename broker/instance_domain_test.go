package broker

import (
	"testing"

	"github.com/rotavault/rotavault/broker/credspec"
)

// A configured instance URL domain widens where tokens may send consumers:
// it must be a real domain, never a bare top-level one.
func TestInstanceURLDomainIsValidatedAndReachesTheProvider(t *testing.T) {
	for domain, ok := range map[string]bool{
		"":                 true,
		"salesforce.mil":   true,
		"sfcrmproducts.cn": true,
		"my-org.example":   true,
		"mil":              false,
		"Salesforce.mil":   false,
		".salesforce.mil":  false,
		"a..mil":           false,
		"-a.mil":           false,
		"a.mil/x":          false,
		"*.salesforce.mil": false,
	} {
		spec := credspec.Spec{ProviderKind: credspec.ProviderSalesforce, BaseURL: "https://login.salesforce.com", ClientID: "c", Scopes: []string{"api", "refresh_token"}, InstanceURLDomain: domain}
		err := spec.Validate()
		if (err == nil) != ok {
			t.Errorf("instance URL domain %q: validate() = %v, want accepted %v", domain, err, ok)
		}
		if ok && spec.Endpoint().InstanceURLDomain != domain {
			t.Errorf("instance URL domain %q does not reach the provider's endpoint", domain)
		}
	}
}
