// Package detect is early detection: the periodic check that asks the
// provider about every idle family's refresh token, and the policy that
// says when an inactive answer may be taken for a revocation. This package
// decides when, how many at once, asks the provider (Asker) and says what
// an answer can prove; the rotation core re-reads the family and revokes
// it through its one revocation path (broker/detect.go).
//
// A family the provider revoked (a legacy client or a
// thief presented an old refresh token of it, an admin revoked the app's
// authorization) is otherwise noticed only when Rotavault next presents the
// refresh token, which for a token nobody uses can be hours away. Asking
// the introspection endpoint about the refresh token (RFC 7662,
// token_type_hint=refresh_token) tells without presenting it: no rotation
// is spent, and an inactive answer cannot itself cause a reuse detection.
//
// Two triggers: a consumer reporting its access token rejected
// (broker/access.go, handleRejection), and a periodic check of every idle
// family (family.Record.Idle in broker/family: no claim, live or expired,
// and no doubt) whose provider has an
// introspection endpoint.
//
// An inactive answer is not proof on its own: the token may have been
// rotated away by a refresh (on this replica or another) that the cached
// view has not seen, or by one whose answer was lost. So the family record
// is re-read and the family revoked only if it is still the same family,
// generation and refresh token, active, with no refresh claim and no refresh
// in doubt; the revocation is a check-and-set write on that version, so a
// refresh that claims in between makes it fail and be reconsidered.
// Introspection errors and answers without "active" never revoke anything.
//
// Salesforce documents introspecting refresh tokens. A generic OAuth 2.0
// server need not: RFC 7662 §2.2 has it answer active=false for a token it
// does not know or will not introspect for this client, and some introspect
// access tokens only, so every refresh token would look revoked. For those
// providers an inactive refresh token counts only when the family's current
// access token, well within its lifetime, is inactive too (revoking a
// family kills its access tokens: RFC 7009 §2.1, fosite on reuse); without
// one to ask about nothing is concluded, and the next refresh finds out for
// sure. The access token's inactivity counts only while it is surely
// unexpired at the provider: its lifetime is counted from when we asked for
// it (accessToken.AliveUntil), before the provider issued it, and the
// introspection answer must arrive before then. So a 20 s token corroborates
// for most of its 20 s, not only while a fixed minute is left (which made
// the check never run for tokens living under about 70 s). A family nobody
// uses (its access token expired) is not introspected at a generic provider
// (the answer could conclude nothing); it stays due and is checked once a
// consumer's fetch brings a fresh access token (EarlyDetection says which).
// An inactive verdict costs one more introspection there, and no store read
// when the access token is active.
//
// Cost and delay of the periodic check: every family the core lists once
// per interval (±10% jitter, the first check at a random point of the first
// interval, so a restart or a family changing hands does not make a burst),
// at most introspectionConcurrency calls in flight. No store reads or
// writes unless the provider says inactive (and, at a generic provider, the
// access token agrees). Replicas sharing a store list only the families of
// the shards they hold (duty leases, broker/internal/lease), so the provider
// sees credentials / interval calls however many replicas run (100,000
// credentials, 5 minutes: 333 calls/s; at generic providers only
// credentials with a live access token count); the leases cost a store read
// and write per replica per tick, not per check. A family revoked at the
// provider is detected by the replica holding it within 1.1 × interval +
// one tick (interval/60, at most 5s) + the introspection and store round
// trips, plus up to one lease period when its replica died, and its
// watchers are notified after that within the notice fan-out delay.
package detect

import (
	"context"
	"math/rand/v2"
	"time"
)

const (
	// DefaultIntrospectionInterval is the default period of the check.
	DefaultIntrospectionInterval = 5 * time.Minute
	// DefaultIntrospectionConcurrency bounds the checks in flight.
	DefaultIntrospectionConcurrency = 32
	// IntrospectTimeout bounds one introspection call.
	IntrospectTimeout = 10 * time.Second
	// jitterDiv: each check is due interval ± interval/jitterDiv after the
	// previous one.
	jitterDiv = 10
	// legacyCorroborationMargin: for an access token stored without
	// AliveUntil, the margin before its ExpiresAt (by our clock, which starts
	// it after the provider did) beyond which it may already be expired at
	// the provider, so its inactivity says nothing about the family.
	legacyCorroborationMargin = time.Minute
	// corroborationLead: a periodic check is not started for an access token
	// with less than this left of its known life at the provider; two
	// introspections rarely fit in less.
	corroborationLead = time.Second
)

// Core is what the periodic check needs of the rotation core, for
// credentials named by keys of type K (comparable, the same for as long as
// the credential's family is the one checked).
type Core[K comparable] interface {
	// Credentials lists this replica's credentials now.
	Credentials() []K
	// Check returns the check of k's family as it is now, or false when
	// the family is not worth one now (it then stays due).
	Check(k K, now time.Time) (check func(ctx context.Context), ok bool)
}

// Config tunes the periodic check.
type Config struct {
	// Interval is the period of the check; 0 or less turns it off.
	Interval time.Duration
	// Concurrency bounds the checks in flight.
	Concurrency int
	// Tick overrides the loop's tick (Interval/60, between 10ms and 5s),
	// for tests.
	Tick time.Duration
	Now  func() time.Time
	// Go runs f in a goroutine its owner waits for at shutdown, and
	// reports false, running nothing, once the owner is closed.
	Go func(f func()) bool
}

// Detector runs the periodic check. Not safe for concurrent use: one
// goroutine runs it.
type Detector[K comparable] struct {
	core Core[K]
	cfg  Config
}

// New returns the periodic check of core's credentials.
func New[K comparable](core Core[K], cfg Config) *Detector[K] {
	return &Detector[K]{core: core, cfg: cfg}
}

// tick is how often the loop looks for due checks: a sixtieth of the
// interval, between 10ms and 5s.
func (d *Detector[K]) tick() time.Duration {
	if d.cfg.Tick > 0 {
		return d.cfg.Tick
	}
	return min(max(d.cfg.Interval/60, 10*time.Millisecond), 5*time.Second)
}

// state is the periodic check's memory of one credential. It lives in the
// loop's own map: only the loop goroutine touches it.
type state struct {
	due  time.Time
	pass uint64
}

// Run runs the periodic check until ctx ends or the owner closes; at once
// when the check is off.
func (d *Detector[K]) Run(ctx context.Context) {
	if d.cfg.Interval <= 0 {
		return
	}
	t := time.NewTicker(d.tick())
	defer t.Stop()
	sem := make(chan struct{}, d.cfg.Concurrency)
	states := make(map[K]*state)
	var pass uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pass++
		if !d.due(ctx, states, pass, sem) {
			return
		}
		// Forget credentials that are gone (deleted, or reloaded as a new
		// entry).
		for k, st := range states {
			if st.pass != pass {
				delete(states, k)
			}
		}
	}
}

// due starts the checks that are due. It reports false once the owner is
// closing.
func (d *Detector[K]) due(ctx context.Context, states map[K]*state, pass uint64, sem chan struct{}) bool {
	interval := d.cfg.Interval
	jitter := interval / jitterDiv
	now := d.cfg.Now()
	for _, k := range d.core.Credentials() {
		st, ok := states[k]
		if !ok {
			// Spread the first checks over the interval.
			st = &state{due: now.Add(rand.N(interval))}
			states[k] = st
		}
		st.pass = pass
		if now.Before(st.due) {
			continue
		}
		check, ok := d.core.Check(k, now)
		if !ok {
			// Stays due: checked at the first tick it can be (a refresh
			// ends, a consumer's fetch brings a live access token).
			continue
		}
		st.due = now.Add(interval - jitter + rand.N(2*jitter+1))
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return false
		}
		started := d.cfg.Go(func() {
			defer func() { <-sem }()
			check(ctx)
		})
		if !started {
			<-sem
			return false
		}
	}
	return true
}

// AliveAtProviderUntil is when an access token may first be expired at
// the provider: aliveUntil when it was recorded (its lifetime counted from
// when we asked for it), else a margin before expiresAt.
func AliveAtProviderUntil(aliveUntil, expiresAt time.Time) time.Time {
	if !aliveUntil.IsZero() {
		return aliveUntil
	}
	return expiresAt.Add(-legacyCorroborationMargin)
}

// Corroborable reports whether an inactive answer about a refresh token
// could be taken for a revocation: at Salesforce (not generic) always, at a
// generic provider while the family's access token (none: empty) has
// corroborationLead left of its known life there (aliveUntil, see
// AliveAtProviderUntil).
func Corroborable(generic bool, accessToken string, aliveUntil, now time.Time) bool {
	if !generic {
		return true
	}
	return accessToken != "" && aliveUntil.Sub(now) >= corroborationLead
}

// State says whether the periodic check watches a credential's family now,
// and if not, why.
type State int

const (
	StateUnspecified State = iota
	// StateActive: the family is introspected every interval.
	StateActive
	// StateDisabled: the periodic check is off on this server.
	StateDisabled
	// StateNoEndpoint: the credential has no introspection URL.
	StateNoEndpoint
	// StateNoFamily: no active family to check.
	StateNoFamily
	// StateWaiting: a generic provider, and no access token known alive
	// there to corroborate with; checked once a fetch brings one.
	StateWaiting
)

var stateNames = [...]string{"unspecified", "active", "disabled", "no_introspection_endpoint", "no_family", "waiting_for_access_token"}

func (s State) String() string {
	if s < 0 || int(s) >= len(stateNames) {
		return "unspecified"
	}
	return stateNames[s]
}

// Describe says what the periodic check (every interval; off when 0 or
// less) makes of a family: its state and a sentence saying what it means.
func Describe(interval time.Duration, hasEndpoint, active, corroborable bool) (State, string) {
	switch {
	case interval <= 0:
		return StateDisabled, "periodic introspection is off on this server (--introspection-interval 0); a revoked family is found at its next refresh"
	case !hasEndpoint:
		return StateNoEndpoint, "no introspection endpoint (set --introspection-url, or --issuer if the provider publishes one); a revoked family is found at its next refresh"
	case !active:
		return StateNoFamily, "no active token family"
	case !corroborable:
		return StateWaiting, "the provider may not introspect refresh tokens, and no access token is known alive there to corroborate with; checked once a consumer fetches a token"
	}
	return StateActive, "introspected every " + interval.String()
}
