package broker

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// The protocol document's state list and diagram are generated from the
// transition table: a state or a transition the code has and the document
// lacks (or the reverse) fails this test.

const (
	protocolDoc      = "../docs/rotation-protocol.md"
	docGeneratedFrom = "<!-- generated from broker/family.go: ROTAVAULT_UPDATE_DOCS=1 go test ./broker -run TestProtocolDocMatchesTransitionTable -->"
	docGeneratedEnd  = "<!-- end of generated section -->"
)

// familyTableMarkdown renders the states, a state diagram and the
// transitions of the table.
func familyTableMarkdown() string {
	var b strings.Builder
	b.WriteString(docGeneratedFrom + "\n\n")
	b.WriteString("| state | what it means |\n|---|---|\n")
	for s := range numFamilyStates {
		fmt.Fprintf(&b, "| `%s` | %s |\n", s, familyStates[s].meaning)
	}
	b.WriteString("\n```mermaid\nstateDiagram-v2\n")
	fmt.Fprintf(&b, "    [*] --> %s\n", stateAwaitingReauth)
	for _, t := range familyTransitions {
		fmt.Fprintf(&b, "    %s --> %s: %s\n", t.From, t.To, t.Event)
	}
	b.WriteString("```\n\n")
	b.WriteString("| from | event | to | when |\n|---|---|---|---|\n")
	for _, t := range familyTransitions {
		fmt.Fprintf(&b, "| `%s` | %s | `%s` | %s |\n", t.From, t.Event, t.To, t.Why)
	}
	b.WriteString("\n" + docGeneratedEnd)
	return b.String()
}

func TestProtocolDocMatchesTransitionTable(t *testing.T) {
	raw, err := os.ReadFile(protocolDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	start := strings.Index(doc, docGeneratedFrom)
	end := strings.Index(doc, docGeneratedEnd)
	if start < 0 || end < start {
		t.Fatalf("%s has no generated state section (%q ... %q)", protocolDoc, docGeneratedFrom, docGeneratedEnd)
	}
	want := familyTableMarkdown()
	got := doc[start : end+len(docGeneratedEnd)]
	if got == want {
		return
	}
	if os.Getenv("ROTAVAULT_UPDATE_DOCS") == "1" {
		if err := os.WriteFile(protocolDoc, []byte(doc[:start]+want+doc[end+len(docGeneratedEnd):]), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("rewrote the state section of %s", protocolDoc)
		return
	}
	for _, line := range strings.Split(want, "\n") {
		if !strings.Contains(got, line) {
			t.Errorf("the document lacks: %s", line)
		}
	}
	for _, line := range strings.Split(got, "\n") {
		if !strings.Contains(want, line) {
			t.Errorf("the document has, the table not: %s", line)
		}
	}
	t.Fatalf("%s is not the transition table's; ROTAVAULT_UPDATE_DOCS=1 go test ./broker -run TestProtocolDocMatchesTransitionTable rewrites it", protocolDoc)
}

// Every state is reachable and every event used: a state added to the type
// without transitions, or an event nothing raises, is a hole in the table.
func TestTransitionTableCoversEveryStateAndEvent(t *testing.T) {
	reached := map[familyState]bool{stateAwaitingReauth: true}
	left := map[familyState]bool{}
	used := map[familyEvent]bool{}
	seen := map[transition]bool{}
	for _, tr := range familyTransitions {
		key := transition{From: tr.From, Event: tr.Event, To: tr.To}
		if seen[key] {
			t.Errorf("transition %s --%s--> %s listed twice", tr.From, tr.Event, tr.To)
		}
		seen[key] = true
		reached[tr.To], left[tr.From], used[tr.Event] = true, true, true
		if tr.Why == "" {
			t.Errorf("transition %s --%s--> %s does not say when it happens", tr.From, tr.Event, tr.To)
		}
	}
	for s := range numFamilyStates {
		if familyStates[s].name == "" || familyStates[s].meaning == "" {
			t.Errorf("state %d has no name or meaning", s)
		}
		if !reached[s] || !left[s] {
			t.Errorf("state %s: reached %v, left %v; every state is both", s, reached[s], left[s])
		}
	}
	for ev := range numFamilyEvents {
		if !used[ev] {
			t.Errorf("event %s appears in no transition", ev)
		}
	}
}
