package integration

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
)

// The fault test's history and the invariants checked over it. The checker
// is a pure function of the recorded history, so that it can be tested
// with histories that break each invariant (TestFaultCheckerFinds…).

// Invariant names, as reported.
const (
	invReuse          = "REUSE"              // a refresh token presented twice, other than for a lost answer
	invLostRotation   = "LOST_ROTATION"      // a lost answer not reported as one LOST_ROTATION, or another revocation
	invHandedOutValid = "HANDED_OUT_VALID"   // a token handed out that the provider refused right after
	invFailureCode    = "FAILURE_CODE"       // a failure with a code a caller cannot simply retry
	invFailureOutside = "FAILURE_OUTSIDE"    // a failure while nothing on its path was down
	invFailureReason  = "FAILURE_REASON"     // a failure blaming a part that was up (the provider for a Vault outage)
	invRecovery       = "RECOVERY"           // a replica not serving within the bound after the last fault
	invLeak           = "LEAK"               // a secret in a log file
	invHistory        = "HISTORY_INCOMPLETE" // the run could not record what it needed
)

// Path components a fault can take down: each call goes through its replica,
// the shared Vault, and its credential's provider.
type faultTarget struct {
	Replica  int    // -1: not a replica
	Vault    bool   // the shared store
	Provider string // "": not a provider
}

// faultRecord is one fault of the schedule, from the moment it was
// injected to the moment the path served again (or was restored).
type faultRecord struct {
	Kind     string
	Target   faultTarget
	Begin    time.Time
	End      time.Time
	Detail   string
	Lost     bool   // an answer was lost at the provider
	LostCred string // the credential whose answer was lost, if known
}

// callRecord is one GetAccessToken as a consumer saw it.
type callRecord struct {
	Source     string // "client" (the Go client) or "rpc" (a bare call)
	Replica    int
	Cred       string
	Begin, End time.Time
	// Failure: a gRPC code other than OK.
	Code      codes.Code
	Reason    string
	RetryInfo bool
	Message   string
	// Success: the token's name and what the provider said of it right
	// after (Checked false when the check itself failed).
	Fingerprint string
	Generation  uint64
	Checked     bool
	Valid       bool
	CheckedAt   time.Time
}

// noticeRecord is one revocation notice the watcher received.
type noticeRecord struct {
	At     time.Time
	Cred   string
	Family string
	Kind   string
	Reason string
}

// providerRecord is what one provider counted over the run.
type providerRecord struct {
	Name  string
	Grace bool // it accepts the previous refresh token for a while
	// Reuses: superseded refresh tokens presented outside any grace.
	Reuses int
	// LostAnswers: answers dropped after the provider processed them.
	LostAnswers int
	// Rotations: refreshes that issued a new refresh token (a figure of
	// the run, not an invariant).
	Rotations int
	Creds     []string
}

// recoveryRecord is when a replica served every credential again after the
// last fault ended.
type recoveryRecord struct {
	Replica int
	Served  time.Time // zero: never within the run
}

// faultHistory is everything a run recorded.
type faultHistory struct {
	Seed      uint64
	Begin     time.Time
	LastFault time.Time // when the last fault ended
	// Settle is how long after a fault ends its effects may last: a claim
	// taken before it still has to run out, queued calls finish.
	Settle        time.Duration
	RecoveryBound time.Duration
	Faults        []faultRecord
	Calls         []callRecord
	Notices       []noticeRecord
	Providers     []providerRecord
	Recovery      []recoveryRecord
	Leaks         []string // "where: which secret in which encoding", never the secret
	Incomplete    []string
}

type violation struct {
	Invariant string
	At        time.Time
	Detail    string
	Code      codes.Code // of the failed call, for failure invariants
}

func (v violation) String() string {
	at := "-"
	if !v.At.IsZero() {
		at = v.At.UTC().Format("15:04:05.000")
	}
	return fmt.Sprintf("%s at %s: %s", v.Invariant, at, v.Detail)
}

// credProvider maps each credential to its provider.
func (h *faultHistory) credProvider() map[string]*providerRecord {
	m := make(map[string]*providerRecord)
	for i := range h.Providers {
		for _, c := range h.Providers[i].Creds {
			m[c] = &h.Providers[i]
		}
	}
	return m
}

// affects reports whether fault f can take down the path of a call to
// replica through provider. A replica's fault takes every replica's path
// too: a claim it held keeps the others waiting. A transport failure (no
// answer from the server at all) belongs to its own replica's faults only.
func (f faultRecord) affects(replica int, provider string, transport bool) bool {
	switch {
	case transport:
		return f.Target.Replica == replica
	case f.Target.Vault:
		return true
	case f.Target.Provider != "":
		return f.Target.Provider == provider
	default:
		return f.Target.Replica >= 0
	}
}

// lostWindow reports whether the call's credential was in the window of a
// lost answer: from the fault until the credential was imported again.
func (h *faultHistory) lostWindow(cred string, begin, end time.Time) bool {
	if p := h.credProvider()[cred]; p != nil && p.Grace {
		return false // a lost answer within grace loses nothing
	}
	for _, f := range h.Faults {
		if f.Lost && f.LostCred == cred && !end.Before(f.Begin) && !begin.After(f.End.Add(h.Settle)) {
			return true
		}
	}
	return false
}

// inOutage reports whether the interval [begin, end] overlaps an outage of
// the path (replica, provider), each outage extended by the settle time.
func (h *faultHistory) inOutage(replica int, provider string, transport bool, begin, end time.Time) bool {
	for _, f := range h.Faults {
		if f.affects(replica, provider, transport) && !end.Before(f.Begin) && !begin.After(f.End.Add(h.Settle)) {
			return true
		}
	}
	return false
}

// retryable: the codes a caller retries as they are. UNAVAILABLE and
// RESOURCE_EXHAUSTED from the server carry RetryInfo; a transport error
// (the replica is down: no ErrorInfo, no RetryInfo) and a caller's own
// deadline carry none.
func retryable(c callRecord) bool {
	switch c.Code {
	case codes.DeadlineExceeded:
		return true
	case codes.Unavailable, codes.ResourceExhausted:
		return c.RetryInfo || c.Reason == ""
	}
	return false
}

// blamedWasUp names the part a failure's reason blames when that part was
// not down during the call ("" when the blame is right or not specific): a
// caller told PROVIDER_UNAVAILABLE looks at the provider, not at Vault.
func (h *faultHistory) blamedWasUp(c callRecord, provider string) string {
	var blamed func(f faultRecord) bool
	switch c.Reason {
	case "PROVIDER_UNAVAILABLE":
		blamed = func(f faultRecord) bool { return f.Target.Provider == provider }
	case "STORE_UNAVAILABLE":
		blamed = func(f faultRecord) bool { return f.Target.Vault }
	default:
		return ""
	}
	for _, f := range h.Faults {
		if blamed(f) && !c.End.Before(f.Begin) && !c.Begin.After(f.End.Add(h.Settle)) {
			return ""
		}
	}
	return "blames " + strings.ToLower(strings.TrimSuffix(c.Reason, "_UNAVAILABLE")) + ", which was up"
}

// transport reports whether a failure came from the connection rather than
// the server: UNAVAILABLE without ErrorInfo. (A caller's own deadline may
// be either; it counts as the server's.)
func transport(c callRecord) bool {
	return c.Code == codes.Unavailable && c.Reason == ""
}

// checkFaultHistory returns every violation of the fault test's invariants
// in h, ordered by time.
func checkFaultHistory(h *faultHistory) []violation {
	var out []violation
	for _, s := range h.Incomplete {
		out = append(out, violation{Invariant: invHistory, Detail: s})
	}
	provOf := h.credProvider()

	// Reuse at the provider: one per answer lost without grace, none else;
	// each such loss announced as one LOST_ROTATION of its credential and
	// nothing else revoked.
	lostPerCred := make(map[string]int)
	for _, f := range h.Faults {
		if f.Lost && f.LostCred != "" {
			lostPerCred[f.LostCred]++
		}
	}
	for _, p := range h.Providers {
		want := 0
		if !p.Grace {
			want = p.LostAnswers
		}
		if p.Reuses != want {
			out = append(out, violation{Invariant: invReuse,
				Detail: fmt.Sprintf("provider %s saw %d refresh-token reuses, want %d (one per answer lost without grace; %d answers lost, grace %v)", p.Name, p.Reuses, want, p.LostAnswers, p.Grace)})
		}
	}
	lostNotices := make(map[string]int)
	for _, n := range h.Notices {
		if n.Kind != "FAMILY_REVOKED" {
			continue
		}
		p := provOf[n.Cred]
		if n.Reason == "LOST_ROTATION" && p != nil && !p.Grace {
			lostNotices[n.Cred]++
			continue
		}
		out = append(out, violation{Invariant: invLostRotation, At: n.At,
			Detail: fmt.Sprintf("credential %s family %s revoked (%s): nothing but a lost answer without grace may revoke", n.Cred, n.Family, n.Reason)})
	}
	creds := make([]string, 0, len(provOf))
	for c := range provOf {
		creds = append(creds, c)
	}
	sort.Strings(creds)
	for _, c := range creds {
		want := lostPerCred[c]
		if provOf[c].Grace {
			want = 0
		}
		if lostNotices[c] != want {
			out = append(out, violation{Invariant: invLostRotation,
				Detail: fmt.Sprintf("credential %s: %d LOST_ROTATION notices, want %d (answers lost: %d, grace %v)", c, lostNotices[c], want, lostPerCred[c], provOf[c].Grace)})
		}
	}

	for _, c := range h.Calls {
		p := provOf[c.Cred]
		provider := ""
		if p != nil {
			provider = p.Name
		}
		lost := h.lostWindow(c.Cred, c.Begin, c.End)
		if c.Code == codes.OK {
			if c.Checked && !c.Valid && !lost {
				out = append(out, violation{Invariant: invHandedOutValid, At: c.End,
					Detail: fmt.Sprintf("replica %d (%s) handed out %s generation %d (fingerprint %s); the provider refused it %s later", c.Replica, c.Source, c.Cred, c.Generation, c.Fingerprint, c.CheckedAt.Sub(c.End).Round(time.Millisecond))})
			}
			continue
		}
		if lost && c.Code == codes.FailedPrecondition && c.Reason == "REAUTHENTICATION_REQUIRED" {
			continue // the family is gone until it is imported again
		}
		desc := fmt.Sprintf("replica %d (%s) %s: %s %s retryInfo=%v after %s: %q", c.Replica, c.Source, c.Cred, c.Code, c.Reason, c.RetryInfo, c.End.Sub(c.Begin).Round(time.Millisecond), c.Message)
		if !retryable(c) {
			out = append(out, violation{Invariant: invFailureCode, At: c.End, Detail: desc, Code: c.Code})
		}
		if !h.inOutage(c.Replica, provider, transport(c), c.Begin, c.End) {
			out = append(out, violation{Invariant: invFailureOutside, At: c.End, Detail: desc, Code: c.Code})
		} else if blamed := h.blamedWasUp(c, provider); blamed != "" {
			out = append(out, violation{Invariant: invFailureReason, At: c.End, Detail: desc + ": " + blamed, Code: c.Code})
		}
	}

	for _, r := range h.Recovery {
		switch {
		case r.Served.IsZero():
			out = append(out, violation{Invariant: invRecovery, At: h.LastFault,
				Detail: fmt.Sprintf("replica %d did not serve every credential after the last fault", r.Replica)})
		case r.Served.Sub(h.LastFault) > h.RecoveryBound:
			out = append(out, violation{Invariant: invRecovery, At: r.Served,
				Detail: fmt.Sprintf("replica %d served every credential %s after the last fault, bound %s", r.Replica, r.Served.Sub(h.LastFault).Round(time.Millisecond), h.RecoveryBound)})
		}
	}
	for _, l := range h.Leaks {
		out = append(out, violation{Invariant: invLeak, Detail: l})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	return out
}

// findLeaks names every (text, secret, spelling) where a secret appears.
// Secrets shorter than 16 characters are skipped: they would match by
// chance, and every real one here is longer.
func findLeaks(secrets []string, texts map[string]string) []string {
	var out []string
	names := make([]string, 0, len(texts))
	for n := range texts {
		names = append(names, n)
	}
	sort.Strings(names)
	seen := make(map[string]bool)
	for i, s := range secrets {
		if len(s) < 16 || seen[s] {
			continue
		}
		seen[s] = true
		for enc, spelled := range secretSpellings(s) {
			for _, n := range names {
				if strings.Contains(texts[n], spelled) {
					out = append(out, fmt.Sprintf("%s holds secret #%d (%d characters) spelled %s", n, i, len(s), enc))
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

// summarize counts violations per invariant.
func summarize(vs []violation) map[string]int {
	m := make(map[string]int)
	for _, v := range vs {
		m[v.Invariant]++
	}
	return m
}
