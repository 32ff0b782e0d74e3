package server

import (
	"strings"
	"testing"
)

// encoding/json matches keys case-insensitively and lets the last of two
// duplicates win, so {"role":"consumer","Role":"admin"} would be an admin
// rule to the server and a consumer rule to a reader. Such policies, and an
// admin rule with a credentials list (admin covers every credential, the
// list would only mislead), are refused with an error naming the rule.
func TestPolicyRefusesKeysThatReadTwoWays(t *testing.T) {
	for _, tt := range []struct {
		name, policy, wantInErr string
	}{
		{"key in another case", `{"rules":[{"identity":"a","role":"consumer","credentials":["x"]},{"identity":"b","Role":"admin"}]}`, "policy rule 2"},
		{"duplicate key in another case", `{"rules":[{"identity":"a","role":"consumer","credentials":["x"],"ROLE":"admin"}]}`, "policy rule 1"},
		{"duplicate key", `{"rules":[{"identity":"a","role":"consumer","role":"admin","credentials":["x"]}]}`, "policy rule 1"},
		{"identity twice", `{"rules":[{"identity":"a","IDENTITY":"spiffe://x/admin","role":"admin"}]}`, "policy rule 1"},
		{"top-level key in another case", `{"Rules":[{"identity":"a","role":"admin"}]}`, "parse policy"},
		{"top-level key twice", `{"rules":[],"rules":[{"identity":"a","role":"admin"}]}`, "parse policy"},
		{"admin with a credentials list", `{"rules":[{"identity":"a","role":"admin","credentials":["x"]}]}`, "policy rule 1"},
		{"admin with an empty credentials list", `{"rules":[{"identity":"a","role":"admin","credentials":[]}]}`, "policy rule 1"},
		{"max_watch_streams below 1", `{"rules":[{"identity":"a","role":"consumer","credentials":["x"],"max_watch_streams":0}]}`, "policy rule 1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParsePolicy([]byte(tt.policy))
			if err == nil {
				t.Fatalf("ParsePolicy accepted %s", tt.policy)
			}
			if !strings.Contains(err.Error(), tt.wantInErr) {
				t.Fatalf("error %q does not name %q", err, tt.wantInErr)
			}
		})
	}
}

// max_watch_streams: the largest among the rules matching an identity that
// set one; none set, the server's default.
func TestPolicyMaxWatchStreams(t *testing.T) {
	p, err := ParsePolicy([]byte(`{"rules":[
		{"identity":"spiffe://x/ns/fleet/*","role":"consumer","credentials":["c"],"max_watch_streams":5000},
		{"identity":"spiffe://x/ns/fleet/big","role":"consumer","credentials":["d"],"max_watch_streams":8000},
		{"identity":"spiffe://x/ns/other","role":"consumer","credentials":["c"]}
	]}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		id     string
		want   int
		wantOK bool
	}{
		{"spiffe://x/ns/fleet/a", 5000, true},
		{"spiffe://x/ns/fleet/big", 8000, true},
		{"spiffe://x/ns/other", 0, false},
	} {
		if got, ok := p.MaxWatchStreams(tt.id); got != tt.want || ok != tt.wantOK {
			t.Errorf("MaxWatchStreams(%q) = %d, %v; want %d, %v", tt.id, got, ok, tt.want, tt.wantOK)
		}
	}
}
