package broker

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/rotavault/rotavault/provider"
)

// Early detection. A family the provider revoked (a legacy client or a
// thief presented an old refresh token of it, an admin revoked the app's
// authorization) is otherwise noticed only when Rotavault next presents the
// refresh token, which for a token nobody uses can be hours away. Asking
// the introspection endpoint about the refresh token (RFC 7662,
// token_type_hint=refresh_token) tells without presenting it: no rotation
// is spent, and an inactive answer cannot itself cause a reuse detection.
//
// Two triggers: a consumer reporting its access token rejected (access.go,
// handleRejection), and a periodic check of every idle family (familyRecord.
// idle: no claim, live or expired, and no doubt) whose provider has an
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
// Cost and delay of the periodic check, per replica: every family once per
// interval (±10% jitter, the first check at a random point of the first
// interval, so a restart does not make a burst), at most
// introspectionConcurrency calls in flight. No store reads or writes unless
// the provider says inactive (and, at a generic provider, the access token
// agrees). Replicas do not coordinate: the provider sees
// replicas × credentials / interval calls (10 replicas, 100,000
// credentials, 5 minutes: 3,333 calls/s; one replica: 333/s; at generic
// providers only credentials with a live access token count). Coordinating
// would cost a store write (or read) per check, the load this design
// avoids. A family revoked at the provider is detected by a replica within
// 1.1 × interval + one tick (interval/60, at most 5s) + the introspection
// and store round trips, and its watchers are notified after that within
// the notice fan-out delay; with R replicas checking independently, the
// expected delay falls to about interval / (R + 1).

const (
	// DefaultIntrospectionInterval is the default period of the check.
	DefaultIntrospectionInterval = 5 * time.Minute
	// DefaultIntrospectionConcurrency bounds the checks in flight.
	DefaultIntrospectionConcurrency = 32
	// introspectTimeout bounds one introspection call.
	introspectTimeout = 10 * time.Second
	// detectJitterDiv: each check is due interval ± interval/detectJitterDiv
	// after the previous one.
	detectJitterDiv = 10
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

// detectTick is how often the loop looks for due checks: a sixtieth of the
// interval, between 10ms and 5s.
func (b *Broker) detectTick() time.Duration {
	if b.opts.detectTick > 0 {
		return b.opts.detectTick
	}
	return min(max(b.opts.introspectionInterval/60, 10*time.Millisecond), 5*time.Second)
}

// startDetector runs the periodic check until ctx ends, when enabled.
func (b *Broker) startDetector(ctx context.Context) {
	if b.opts.introspectionInterval <= 0 {
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		b.runDetector(ctx)
	}()
}

// detectState is the periodic check's memory of one credential. It lives in
// the loop's own map: only the loop goroutine touches it.
type detectState struct {
	due  time.Time
	pass uint64
}

func (b *Broker) runDetector(ctx context.Context) {
	t := time.NewTicker(b.detectTick())
	defer t.Stop()
	sem := make(chan struct{}, b.opts.introspectionConcurrency)
	states := make(map[*entry]*detectState)
	var pass uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pass++
		if !b.detectDue(ctx, states, pass, sem) {
			return
		}
		// Forget credentials that are gone (deleted, or reloaded as a new
		// entry).
		for e, st := range states {
			if st.pass != pass {
				delete(states, e)
			}
		}
	}
}

// detectDue starts the checks that are due. It reports false once the
// broker is closing.
func (b *Broker) detectDue(ctx context.Context, states map[*entry]*detectState, pass uint64, sem chan struct{}) bool {
	interval := b.opts.introspectionInterval
	jitter := interval / detectJitterDiv
	now := b.opts.now()
	for _, e := range b.snapshotEntries() {
		st, ok := states[e]
		if !ok {
			// Spread the first checks over the interval.
			st = &detectState{due: now.Add(rand.N(interval))}
			states[e] = st
		}
		st.pass = pass
		if now.Before(st.due) {
			continue
		}
		v := e.view.Load()
		if !b.detectable(e, v, now) {
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
		started := b.goTracked(func() {
			defer func() { <-sem }()
			b.checkFamily(ctx, e, v)
		})
		if !started {
			<-sem
			return false
		}
	}
	return true
}

// detectable reports whether v's family is worth a periodic check: active,
// holding a refresh token that no refresh is rotating right now, at a
// provider with an introspection endpoint, and corroborable. It only saves
// calls: the cached view may be stale (another replica refreshed), and the
// re-read after an inactive answer decides.
func (b *Broker) detectable(e *entry, v *view, now time.Time) bool {
	if v == nil || !v.fam.idle() || v.fam.RefreshToken == "" {
		return false // a refresh is running, or may have rotated the token
	}
	if e.rescue.Load() != nil {
		return false // the stored token is already rotated away; a write is pending
	}
	if !b.corroborable(v, now) {
		return false // an inactive answer could conclude nothing
	}
	e.mu.Lock()
	busy := e.flight != nil
	e.mu.Unlock()
	return !busy && v.cred.Spec.endpoint().IntrospectionURL != ""
}

// checkFamily introspects v's refresh token and, when the provider says it
// is inactive, confirms and records the revocation.
func (b *Broker) checkFamily(ctx context.Context, e *entry, v *view) {
	active, err := b.introspectRefresh(ctx, v)
	if err != nil {
		b.log.DebugContext(ctx, "periodic introspection failed; nothing concluded", "credential", e.id, "err", err)
		return
	}
	if active {
		return
	}
	if _, err := b.confirmRevokedAtProvider(ctx, e, v, "periodic introspection"); err != nil {
		b.log.WarnContext(ctx, "could not record a family revoked at the provider; the next check or refresh will", "credential", e.id, "err", err)
	}
}

// introspectRefresh asks the provider whether v's refresh token is active.
// Any failure, including an answer without "active", is an error: never a
// verdict.
func (b *Broker) introspectRefresh(ctx context.Context, v *view) (bool, error) {
	spec := v.cred.Spec
	ctx, cancel := context.WithTimeout(ctx, introspectTimeout)
	defer cancel()
	in, err := b.provider.IntrospectToken(ctx, spec.endpoint(), spec.clientCredentials(), v.fam.RefreshToken, provider.HintRefreshToken)
	if err != nil {
		return false, err
	}
	return in.Active, nil
}

// confirmRevokedAtProvider is called after the provider called seen's
// refresh token inactive. It re-reads the family and revokes it (reason
// ReasonRevokedAtProvider: check-and-set write, audit record, notice) only
// if revocationCorroborated agrees and the store still holds exactly that
// token in an active family that no refresh is working on; otherwise the
// answer proves nothing, or the token is inactive because the family moved
// on, and nothing happens. revoked reports whether this call revoked it.
// Errors are the store's (*UnavailableError, ErrNotFound).
func (b *Broker) confirmRevokedAtProvider(ctx context.Context, e *entry, seen *view, how string) (revoked bool, err error) {
	// Once decided, the revocation must be recorded and announced even if
	// the caller goes away.
	ctx, cancel := persistContext(ctx)
	defer cancel()
	// Asked about seen, not the record re-read below: that one is revoked
	// only if it is seen's generation, whose access token seen holds. A
	// contradicted verdict costs no store read.
	if !b.revocationCorroborated(ctx, seen) {
		b.log.DebugContext(ctx, "refresh token inactive at the provider, but its introspection endpoint may not know refresh tokens and the access token does not confirm a revocation; not revoking",
			"credential", e.id, "family", seen.fam.FamilyID, "generation", seen.fam.Generation, "via", how)
		return false, nil
	}
	r := revocation{reason: ReasonRevokedAtProvider, detail: revocationDetail(ReasonRevokedAtProvider), auditDetail: "detected by " + how}
	_, _, err = b.revokeFamily(ctx, e, nil, r, func(cur *view) error {
		if !stillSameLiveToken(seen, cur) || e.rescue.Load() != nil {
			return errMovedOn
		}
		return nil
	})
	switch {
	case errors.Is(err, errMovedOn):
		b.log.InfoContext(ctx, "refresh token inactive at the provider, but the family moved on; not revoking",
			"credential", e.id, "family", seen.fam.FamilyID, "generation", seen.fam.Generation, "via", how)
		return false, nil
	case errors.Is(err, ErrConflict):
		b.log.InfoContext(ctx, "refresh token inactive at the provider, but the family keeps changing; leaving it to the refresh path",
			"credential", e.id, "family", seen.fam.FamilyID)
		return false, nil
	case err != nil:
		return false, err
	}
	b.log.WarnContext(ctx, "refresh token inactive at the provider: token family revoked there; revoked it here",
		"credential", e.id, "family", seen.fam.FamilyID, "generation", seen.fam.Generation, "via", how)
	return true, nil
}

// errMovedOn: the family is no longer the one found inactive.
var errMovedOn = errors.New("broker: the family moved on")

// revocationCorroborated reports whether an inactive answer about v's
// refresh token may be taken for a revoked family (see the top of this
// file): always at Salesforce; at a generic OAuth 2.0 provider only when v's
// access token, not about to expire, is inactive too.
func (b *Broker) revocationCorroborated(ctx context.Context, v *view) bool {
	spec := v.cred.Spec
	if spec.ProviderKind != ProviderOAuth2 {
		return true
	}
	if !b.corroborable(v, b.opts.now()) {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, introspectTimeout)
	defer cancel()
	in, err := b.provider.IntrospectToken(ctx, spec.endpoint(), spec.clientCredentials(), v.fam.Access.Token, provider.HintAccessToken)
	// Answered before the token could have expired at the provider: its
	// inactivity was a revocation, not the end of its life.
	return err == nil && !in.Active && b.opts.now().Before(aliveAtProviderUntil(v.fam.Access))
}

// corroborable reports whether an inactive answer about v's refresh token
// could be taken for a revocation: at Salesforce always, at a generic
// provider while v's access token has corroborationLead left of its known
// life at the provider.
func (b *Broker) corroborable(v *view, now time.Time) bool {
	if v.cred.Spec.ProviderKind != ProviderOAuth2 {
		return true
	}
	a := v.fam.Access
	return a != nil && a.Token != "" && aliveAtProviderUntil(a).Sub(now) >= corroborationLead
}

// aliveAtProviderUntil is when a may first be expired at the provider.
func aliveAtProviderUntil(a *accessToken) time.Time {
	if !a.AliveUntil.IsZero() {
		return a.AliveUntil
	}
	return a.ExpiresAt.Add(-legacyCorroborationMargin)
}

// stillSameLiveToken reports whether cur is the family seen was, at the same
// generation and token, active and idle: no claim (a refresh in progress may
// have rotated the token at the provider already) and no doubt (a refresh
// whose answer was lost may have).
func stillSameLiveToken(seen, cur *view) bool {
	return cur.fam.idle() &&
		cur.cred.Incarnation == seen.cred.Incarnation &&
		cur.fam.FamilyID == seen.fam.FamilyID &&
		cur.fam.Generation == seen.fam.Generation &&
		cur.fam.RefreshToken == seen.fam.RefreshToken
}

// EarlyDetectionState says whether the periodic check watches a
// credential's family now, and if not, why.
type EarlyDetectionState int

const (
	EarlyDetectionUnspecified EarlyDetectionState = iota
	// EarlyDetectionActive: the family is introspected every interval.
	EarlyDetectionActive
	// EarlyDetectionDisabled: the periodic check is off on this server.
	EarlyDetectionDisabled
	// EarlyDetectionNoEndpoint: the credential has no introspection URL.
	EarlyDetectionNoEndpoint
	// EarlyDetectionNoFamily: no active family to check.
	EarlyDetectionNoFamily
	// EarlyDetectionWaiting: a generic provider, and no access token known
	// alive there to corroborate with; checked once a fetch brings one.
	EarlyDetectionWaiting
)

var earlyDetectionNames = [...]string{"unspecified", "active", "disabled", "no_introspection_endpoint", "no_family", "waiting_for_access_token"}

func (s EarlyDetectionState) String() string {
	if s < 0 || int(s) >= len(earlyDetectionNames) {
		return "unspecified"
	}
	return earlyDetectionNames[s]
}

// earlyDetection describes the periodic check's view of v at now: its state
// and a sentence saying what it means.
func (b *Broker) earlyDetection(v *view, now time.Time) (EarlyDetectionState, string) {
	switch {
	case b.opts.introspectionInterval <= 0:
		return EarlyDetectionDisabled, "periodic introspection is off on this server (--introspection-interval 0); a revoked family is found at its next refresh"
	case v.cred.Spec.endpoint().IntrospectionURL == "":
		return EarlyDetectionNoEndpoint, "no introspection endpoint (set --introspection-url, or --issuer if the provider publishes one); a revoked family is found at its next refresh"
	case v.fam.Status != StatusActive:
		return EarlyDetectionNoFamily, "no active token family"
	case !b.corroborable(v, now):
		return EarlyDetectionWaiting, "the provider may not introspect refresh tokens, and no access token is known alive there to corroborate with; checked once a consumer fetches a token"
	}
	return EarlyDetectionActive, "introspected every " + b.opts.introspectionInterval.String()
}
