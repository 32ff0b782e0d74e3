package credspec

import (
	"encoding/json"
	"unique"
)

// intern returns a copy of s that shares its bytes with the other strings
// of the same text interned since the last garbage collection that found
// none of them held by a unique.Handle (the canonical copy is kept only
// while a handle is). Strings many credentials hold alike — one connected
// app's token URL, client id and scopes across tenants, the few token
// types and statuses — are then held once per burst of loading instead of
// once per credential: 100,000 credentials loaded at start share a few
// copies.
func intern(s string) string {
	if s == "" {
		return s
	}
	return unique.Make(s).Value()
}

// internAll interns every string of ss in place.
func internAll(ss []string) {
	for i, s := range ss {
		ss[i] = intern(s)
	}
}

// UnmarshalJSON decodes a stored spec, interning the strings credentials
// of one provider and one app hold alike (see intern). The client secret
// is left as decoded: a secret is not handed to a process-wide table, even
// a weak one.
func (s *Spec) UnmarshalJSON(raw []byte) error {
	type plain Spec // Spec without its methods
	if err := json.Unmarshal(raw, (*plain)(s)); err != nil {
		return err
	}
	for _, p := range []*string{&s.BaseURL, &s.TokenURL, &s.AuthorizeURL, &s.RevocationURL, &s.IntrospectionURL, &s.ClientID,
		&s.DeviceAuthorizationURL, &s.InstanceURLDomain, &s.Issuer} {
		*p = intern(*p)
	}
	internAll(s.Scopes)
	return nil
}

// UnmarshalJSON decodes stored metadata, interning its strings: every
// credential of an issuer holds the same document.
func (d *DiscoveredMetadata) UnmarshalJSON(raw []byte) error {
	type plain DiscoveredMetadata
	if err := json.Unmarshal(raw, (*plain)(d)); err != nil {
		return err
	}
	for _, p := range []*string{&d.Issuer, &d.URL, &d.TokenURL, &d.AuthorizeURL, &d.RevocationURL, &d.IntrospectionURL, &d.DeviceAuthorizationURL} {
		*p = intern(*p)
	}
	internAll(d.TokenEndpointAuthMethods)
	return nil
}
