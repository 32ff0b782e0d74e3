package broker

import (
	"context"
	"errors"
	"time"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/detect"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/notice"
)

// Early detection: the periodic check, its policy and the questions to the
// provider are package detect (its doc says what an inactive answer proves
// and what the check costs); here is the rotation core's side: which
// families are worth a check, and revoking one, through the one
// revocation path, when the answer is corroborated and the family has not
// moved on. The rejected-token path (access.go) uses the same two steps.

// startDetector runs the periodic check until ctx ends, when enabled.
func (b *Broker) startDetector(ctx context.Context) {
	cfg := b.opts.Detect
	if cfg.Interval <= 0 {
		return
	}
	cfg.Now, cfg.Go = b.opts.Now, b.goTracked
	d := detect.New[*entry](detectCore{b}, cfg)
	b.goTracked(func() { d.Run(ctx) })
}

// detectCore is the rotation core as the periodic check sees it: this
// replica's entries, each checked as its view is when due.
type detectCore struct{ b *Broker }

// Credentials are those whose duties this replica holds (duties.go).
func (c detectCore) Credentials() []*entry {
	all := c.b.snapshotEntries()
	mine := all[:0]
	for _, e := range all {
		if c.b.owns(e.id) {
			mine = append(mine, e)
		}
	}
	return mine
}

func (c detectCore) Check(e *entry, now time.Time) (func(context.Context), bool) {
	v := e.view.Load()
	if !c.b.detectable(e, v, now) {
		return nil, false
	}
	return func(ctx context.Context) { c.b.checkFamily(ctx, e, v) }, true
}

// detectable reports whether v's family is worth a periodic check: active,
// holding a refresh token that no refresh is rotating right now, at a
// provider with an introspection endpoint, and corroborable. It only saves
// calls: the cached view may be stale (another replica refreshed), and the
// re-read after an inactive answer decides.
func (b *Broker) detectable(e *entry, v *view, now time.Time) bool {
	if v == nil || !v.fam.Idle() {
		return false // a refresh is running, or may have rotated the token
	}
	if e.rescue.Load() != nil {
		return false // the stored token is already rotated away; a write is pending
	}
	e.mu.Lock()
	busy := e.flight != nil
	e.mu.Unlock()
	return !busy && detectFamily(e, v).Checkable(now)
}

// checkFamily introspects v's refresh token and, when the provider says it
// is inactive, confirms and records the revocation.
func (b *Broker) checkFamily(ctx context.Context, e *entry, v *view) {
	b.asker().Check(ctx, detectFamily(e, v), func(ctx context.Context) (bool, error) {
		return b.confirmRevokedAtProvider(ctx, e, v, "periodic introspection")
	})
}

// asker asks this broker's provider about families' tokens.
func (b *Broker) asker() detect.Asker {
	return detect.Asker{Provider: b.provider, Now: b.opts.Now, Log: b.log}
}

// detectFamily is v's family as early detection asks about it.
func detectFamily(e *entry, v *view) detect.Family {
	f := detect.Family{Credential: e.id, Generation: v.fam.Generation, Spec: &v.cred.Spec, RefreshToken: v.fam.RefreshToken}
	if a := v.fam.Access; a != nil {
		f.Access, f.AliveUntil = a.Token, a.AliveAtProviderUntil()
	}
	return f
}

// confirmRevokedAtProvider is called after the provider called seen's
// refresh token inactive. It re-reads the family and revokes it (reason
// ReasonRevokedAtProvider: check-and-set write, audit record, notice) only
// if the provider corroborates it (detect.Asker.Corroborated) and the store still holds exactly that
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
	if !b.asker().Corroborated(ctx, detectFamily(e, seen)) {
		b.log.DebugContext(ctx, "refresh token inactive at the provider, but its introspection endpoint may not know refresh tokens and the access token does not confirm a revocation; not revoking",
			"credential", e.id, "family", seen.fam.FamilyID, "generation", seen.fam.Generation, "via", how)
		return false, nil
	}
	r := family.Revocation{Reason: notice.ReasonRevokedAtProvider, Detail: family.RevocationDetail(notice.ReasonRevokedAtProvider), AuditDetail: "detected by " + how}
	_, _, err = b.revokeFamily(ctx, e, nil, r, func(cur *view) error {
		if !family.StillSameLiveToken(seen.cred, seen.fam, cur.cred, cur.fam) || e.rescue.Load() != nil {
			return errMovedOn
		}
		return nil
	})
	switch {
	case errors.Is(err, errMovedOn):
		b.log.InfoContext(ctx, "refresh token inactive at the provider, but the family moved on; not revoking",
			"credential", e.id, "family", seen.fam.FamilyID, "generation", seen.fam.Generation, "via", how)
		return false, nil
	case errors.Is(err, brokererr.ErrConflict):
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
