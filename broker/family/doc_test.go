package family

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// The protocol document's state list and diagram are generated from the
// Transition table: a state or a Transition the code has and the document
// lacks (or the reverse) fails this test.

const (
	protocolDoc      = "../../docs/rotation-protocol.md"
	docGeneratedFrom = "<!-- generated from broker/family/state.go: ROTAVAULT_UPDATE_DOCS=1 go test ./broker/family -run TestProtocolDocMatchesTransitionTable -->"
	docGeneratedEnd  = "<!-- end of generated section -->"
)

// familyTableMarkdown renders the states, a state diagram and the
// transitions of the table.
func familyTableMarkdown() string {
	var b strings.Builder
	b.WriteString(docGeneratedFrom + "\n\n")
	b.WriteString("| state | what it means |\n|---|---|\n")
	for s := range NumStates {
		fmt.Fprintf(&b, "| `%s` | %s |\n", s, states[s].meaning)
	}
	b.WriteString("\n```mermaid\nstateDiagram-v2\n")
	fmt.Fprintf(&b, "    [*] --> %s\n", StateAwaitingReauth)
	for _, t := range transitions {
		fmt.Fprintf(&b, "    %s --> %s: %s\n", t.From, t.To, t.Event)
	}
	b.WriteString("```\n\n")
	b.WriteString("| from | event | to | when |\n|---|---|---|---|\n")
	for _, t := range transitions {
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
	t.Fatalf("%s is not the Transition table's; ROTAVAULT_UPDATE_DOCS=1 go test ./broker -run TestProtocolDocMatchesTransitionTable rewrites it", protocolDoc)
}

// Every state is reachable and every event used: a state added to the type
// without transitions, or an event nothing raises, is a hole in the table.
func TestTransitionTableCoversEveryStateAndEvent(t *testing.T) {
	reached := map[State]bool{StateAwaitingReauth: true}
	left := map[State]bool{}
	used := map[Event]bool{}
	seen := map[Transition]bool{}
	for _, tr := range transitions {
		key := Transition{From: tr.From, Event: tr.Event, To: tr.To}
		if seen[key] {
			t.Errorf("Transition %s --%s--> %s listed twice", tr.From, tr.Event, tr.To)
		}
		seen[key] = true
		reached[tr.To], left[tr.From], used[tr.Event] = true, true, true
		if tr.Why == "" {
			t.Errorf("Transition %s --%s--> %s does not say when it happens", tr.From, tr.Event, tr.To)
		}
	}
	for s := range NumStates {
		if states[s].name == "" || states[s].meaning == "" {
			t.Errorf("state %d has no name or meaning", s)
		}
		if !reached[s] || !left[s] {
			t.Errorf("state %s: reached %v, left %v; every state is both", s, reached[s], left[s])
		}
	}
	for ev := range NumEvents {
		if !used[ev] {
			t.Errorf("event %s appears in no Transition", ev)
		}
	}
}
