package option

import (
	"fmt"
	"time"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/credspec"
)

// A provider's reuse grace period (Okta, Auth0, Hydra) accepts the
// superseded refresh token once more for a while after a rotation. That is
// what lets a replica that takes a claim over recover a refresh whose
// answer died with its holder: it presents the same token again, and the
// provider answers with the family's current tokens. It only works if the
// takeover presents within the grace period, counted from the rotation,
// which happened at the earliest when the holder claimed. So a credential
// with a grace period is claimed for at most grace − takeoverSlack, and a
// grace period too short to leave the holder minProviderWindow before the
// claim margin is refused.

const (
	// takeoverSlack is the time a takeover needs between the claim's
	// deadline and presenting the token (a store read and a write).
	takeoverSlack = 2 * time.Second
	// minProviderWindow is the least time a claim of a credential with a
	// grace period leaves for provider calls, before the claim margin.
	minProviderWindow = 3 * time.Second
)

// ReuseGraceTooShort is the InvalidArgumentError code of a reuse grace
// period a refresh claim cannot fit in.
const ReuseGraceTooShort = "REUSE_GRACE_TOO_SHORT"

// MinReuseGrace is the shortest reuse grace period a credential may have
// with this claim margin (WithClaimTiming): margin + minProviderWindow +
// takeoverSlack, 20 s with the default 15 s margin.
func MinReuseGrace(claimMargin time.Duration) time.Duration {
	return claimMargin + minProviderWindow + takeoverSlack
}

// ClaimTTLFor is how long a claim on spec's family lasts: the configured
// time, shortened to fit the provider's reuse grace period.
func (o *Options) ClaimTTLFor(spec credspec.Spec) time.Duration {
	if g := spec.ReuseGrace; g > 0 {
		return min(o.Claim.TTL, g-takeoverSlack)
	}
	return o.Claim.TTL
}

// CheckReuseGrace refuses a reuse grace period that a claim cannot fit in.
// Errors: *brokererr.InvalidArgumentError with Code ReuseGraceTooShort.
func (o *Options) CheckReuseGrace(spec credspec.Spec) error {
	g := spec.ReuseGrace
	if least := MinReuseGrace(o.Claim.Margin); g > 0 && g < least {
		return &brokererr.InvalidArgumentError{
			Field: "spec.reuse_grace_period",
			Reason: fmt.Sprintf("%s is too short: a refresh claim must fit inside it (at least %s: the %s claim margin + %s for the provider call + %s for a takeover); use 0 if the provider has none",
				g, least, o.Claim.Margin, minProviderWindow, takeoverSlack),
			Code: ReuseGraceTooShort,
		}
	}
	return nil
}

// RefuseShortGrace is CheckReuseGrace for a credential already stored,
// whose grace period this server's claim margin outgrew: the credential is
// neither refreshed nor served, since a rotation under a claim that cannot
// fit in the grace period could lose the family the grace period is there
// to save. Errors: brokererr.ErrReuseGraceTooShort (not an invalid
// argument: the call is fine, the stored credential is not).
func (o *Options) RefuseShortGrace(spec credspec.Spec) error {
	if err := o.CheckReuseGrace(spec); err != nil {
		return fmt.Errorf("%w: %v", brokererr.ErrReuseGraceTooShort, err)
	}
	return nil
}
