package credspec

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
	"unsafe"
)

// Two stored specs of one app decode to strings that share their bytes,
// but to equal values all the same; the client secret is not shared.
func TestDecodedSpecsShareWhatTheyHoldAlike(t *testing.T) {
	spec := Spec{ProviderKind: ProviderOAuth2, TokenURL: "https://idp.example.com/oauth2/token", ClientID: "0oa-the-app",
		ClientSecret: "the-secret", Scopes: []string{"openid", "offline_access"}, AccessTokenLife: time.Hour,
		Issuer: "https://idp.example.com", Discovered: &DiscoveredMetadata{Issuer: "https://idp.example.com",
			TokenURL: "https://idp.example.com/oauth2/token", TokenEndpointAuthMethods: []string{"client_secret_basic"}}}
	raw, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	var a, b Spec
	for _, s := range []*Spec{&a, &b} {
		if err := json.Unmarshal(raw, s); err != nil {
			t.Fatal(err)
		}
	}
	if !reflect.DeepEqual(a, spec) {
		t.Fatalf("decoded %+v, want %+v", a, spec)
	}
	same := func(x, y string) bool { return unsafe.StringData(x) == unsafe.StringData(y) }
	for name, pair := range map[string][2]string{
		"token URL": {a.TokenURL, b.TokenURL}, "client id": {a.ClientID, b.ClientID}, "scope": {a.Scopes[1], b.Scopes[1]},
		"issuer": {a.Issuer, b.Issuer}, "discovered token URL": {a.Discovered.TokenURL, b.Discovered.TokenURL},
		"discovered auth method": {a.Discovered.TokenEndpointAuthMethods[0], b.Discovered.TokenEndpointAuthMethods[0]},
	} {
		if !same(pair[0], pair[1]) {
			t.Errorf("the %s is held twice", name)
		}
	}
	if same(a.ClientSecret, b.ClientSecret) {
		t.Error("the client secret went through the process-wide table")
	}
}
