package main

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// A long listing starts printing with its first page: each page is on the
// terminal before the next one is asked for, so `credentials list` over
// 100,000 credentials shows lines after one page, not after all of them.
func TestListingsPrintEachPageAsItArrives(t *testing.T) {
	for _, asJSON := range []bool{false, true} {
		t.Run(fmt.Sprintf("json=%v", asJSON), func(t *testing.T) {
			var out bytes.Buffer
			p := &pagePrinter[*rotavaultv1.Credential]{w: &out, json: asJSON, header: "ID\tSTATUS",
				row: func(tw io.Writer, c *rotavaultv1.Credential) { fmt.Fprintf(tw, "%s\tok\n", c.GetCredentialId()) }}
			pages := map[string][]*rotavaultv1.Credential{
				"":  {{CredentialId: "a1"}, {CredentialId: "a2"}},
				"b": {{CredentialId: "b1"}},
				"c": {{CredentialId: "c1"}},
			}
			next := map[string]string{"": "b", "b": "c", "c": ""}
			var seenBefore []string
			fetch := func(token string) ([]*rotavaultv1.Credential, string, error) {
				seenBefore = append(seenBefore, out.String())
				return pages[token], next[token], nil
			}
			if err := eachPage(fetch, p.page); err != nil {
				t.Fatal(err)
			}
			if err := p.done("nothing"); err != nil {
				t.Fatal(err)
			}
			if seenBefore[0] != "" || !strings.Contains(seenBefore[1], "a2") || strings.Contains(seenBefore[1], "b1") ||
				!strings.Contains(seenBefore[2], "b1") {
				t.Fatalf("output when each page was asked for: %q; want each earlier page printed, no later one", seenBefore)
			}
			got := out.String()
			if strings.Count(got, "ID") != map[bool]int{false: 1, true: 0}[asJSON] || !strings.Contains(got, "c1") || strings.Contains(got, "nothing") {
				t.Fatalf("output %q: want one header (none in JSON), every row, no empty message", got)
			}
		})
	}
	var out bytes.Buffer
	p := &pagePrinter[*rotavaultv1.Credential]{w: &out, header: "ID", row: func(io.Writer, *rotavaultv1.Credential) {}}
	if err := eachPage(func(string) ([]*rotavaultv1.Credential, string, error) { return nil, "", nil }, p.page); err != nil {
		t.Fatal(err)
	}
	_ = p.done("no credentials")
	if out.String() != "no credentials\n" {
		t.Fatalf("empty listing printed %q", out.String())
	}
}
