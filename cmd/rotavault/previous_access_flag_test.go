package main

import (
	"errors"
	"testing"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// --previous-access-token reaches the spec, and a misspelling is a usage
// error rather than the provider-kind default.
func TestPreviousAccessTokenFlag(t *testing.T) {
	for _, c := range []struct {
		flag string
		want rotavaultv1.PreviousAccessToken
	}{
		{"", rotavaultv1.PreviousAccessToken_PREVIOUS_ACCESS_TOKEN_UNSPECIFIED},
		{"revoked", rotavaultv1.PreviousAccessToken_PREVIOUS_ACCESS_TOKEN_REVOKED},
		{"kept", rotavaultv1.PreviousAccessToken_PREVIOUS_ACCESS_TOKEN_KEPT},
	} {
		s := specFlags{previousAccess: c.flag}
		spec, err := s.spec(nil, rotavaultv1.ProviderKind_PROVIDER_KIND_OAUTH2)
		if err != nil || spec.GetPreviousAccessToken() != c.want {
			t.Errorf("--previous-access-token %q: %v, %v; want %v", c.flag, spec.GetPreviousAccessToken(), err, c.want)
		}
	}
	s := specFlags{previousAccess: "sometimes"}
	var ue *usageError
	if _, err := s.spec(nil, rotavaultv1.ProviderKind_PROVIDER_KIND_OAUTH2); !errors.As(err, &ue) {
		t.Errorf("--previous-access-token sometimes: %v, want a usage error", err)
	}
}
