package authflow

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/internal/ctxwait"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store"
)

// DevicePending is a device flow waiting for the user. UserCode is for the
// operator to show to the person approving; the device code never leaves
// the store.
type DevicePending struct {
	State                   string
	UserCode                string
	VerificationURI         string
	VerificationURIComplete string
	ExpiresAt               time.Time
	// Interval is how often the server polls the provider.
	Interval time.Duration
}

func devicePending(state string, f *Record) *DevicePending {
	return &DevicePending{
		State: state, UserCode: f.UserCode,
		VerificationURI: f.VerificationURI, VerificationURIComplete: f.VerificationURIComplete,
		ExpiresAt: f.ExpiresAt, Interval: f.Interval,
	}
}

// StartDeviceAuthorization begins a device flow for the credential: the
// provider issues a user code, this replica polls at the provider's interval
// (another takes over if it dies), and the approved grant installs a new
// family. For Salesforce the scopes must yield a refresh token; generic
// providers need the credential's device authorization URL. Errors:
// *brokererr.InvalidArgumentError, brokererr.ErrNotFound, brokererr.ErrClientRejected, *brokererr.UnavailableError.
func (fl *Flows) StartDeviceAuthorization(ctx context.Context, id string, scopes []string) (DevicePending, error) {
	if err := fl.core.ValidateID(id); err != nil {
		return DevicePending{}, err
	}
	start, err := fl.beginFlow(ctx, id, scopes, func(cred Credential, ep provider.Endpoint) error {
		if cred.Generic && ep.DeviceAuthorizationURL == "" {
			return brokererr.Invalid("spec.device_authorization_url", "the credential has no device authorization endpoint (RFC 8628); set it, or use another flow")
		}
		return nil
	})
	if err != nil {
		return DevicePending{}, err
	}
	d, err := fl.provider.StartDeviceAuthorization(ctx, start.ep, start.cred.Client, start.scopes)
	if err != nil {
		var pe *provider.Error
		switch {
		case errors.As(err, &pe) && pe.Outcome == provider.OutcomeRejected && errors.Is(err, provider.ErrInvalidClient):
			return DevicePending{}, brokererr.ClientRejected(pe, "when starting a device flow")
		case errors.As(err, &pe) && pe.Outcome == provider.OutcomeRejected:
			return DevicePending{}, brokererr.Invalid("device_authorization_start", "the provider refused to start a device flow (%s); is the device flow enabled for the app?", pe.Code)
		}
		return DevicePending{}, &brokererr.UnavailableError{Component: brokererr.ComponentProvider, RetryAfter: time.Second, Err: err}
	}
	now := fl.now()
	interval := d.Interval
	if interval == 0 {
		interval = defaultDeviceInterval
	}
	interval = min(max(interval, minDeviceInterval), maxDeviceInterval)
	lifetime := d.ExpiresIn
	if lifetime == 0 {
		lifetime = defaultDeviceLifetime
	}
	lifetime = min(lifetime, maxDeviceLifetime)
	state := start.state
	f := &Record{
		Kind: FlowDevice, CredentialID: id, Incarnation: start.cred.Incarnation, Scopes: start.scopes,
		StartedAt: now, ExpiresAt: now.Add(lifetime), Status: StatusPending, Actor: audit.Actor(ctx),
		DeviceCode: d.DeviceCode, UserCode: d.UserCode,
		VerificationURI: d.VerificationURI, VerificationURIComplete: d.VerificationURIComplete,
		Interval: interval, Poller: fl.replicaID, LeaseUntil: now.Add(fl.opts.leaseFor(interval)),
	}
	version, err := fl.writeFlow(ctx, state, f, 0)
	if err != nil {
		return DevicePending{}, err
	}
	fl.log.InfoContext(ctx, "device flow started", "credential", id, "expires_at", f.ExpiresAt, "interval", interval)
	fl.startPoller(state, f, version)
	return *devicePending(state, f), nil
}

// takeOverDevice takes the lease of a device flow whose poller is gone (its
// lease ran out, or it released it) and polls it here.
func (fl *Flows) takeOverDevice(ctx context.Context, state string, f *Record, version uint64) {
	if fl.runner.isPolling(state) || !f.Pending() || f.kind() != FlowDevice {
		return
	}
	now := fl.now()
	if now.Before(f.LeaseUntil) && f.Poller != "" {
		return
	}
	taken := *f
	taken.Poller, taken.LeaseUntil = fl.replicaID, now.Add(fl.opts.leaseFor(f.Interval))
	v, err := fl.writeFlow(ctx, state, &taken, version)
	if err != nil {
		return // another replica moved first, or the store is down: the next sweep decides
	}
	if f.Poller != "" && f.Poller != fl.replicaID {
		fl.log.InfoContext(ctx, "took over a device flow's polling", "credential", f.CredentialID, "previous_poller", f.Poller)
	}
	fl.startPoller(state, &taken, v)
}

// startPoller runs pollDevice in a goroutine the broker owns, once per
// flow on this replica.
func (fl *Flows) startPoller(state string, f *Record, version uint64) {
	if !fl.runner.claimLocal(state) {
		return
	}
	own := *f // the poller's to change
	if !fl.goTracked(func() {
		defer fl.runner.dropLocal(state)
		fl.pollDevice(state, &own, version)
	}) {
		fl.runner.dropLocal(state)
	}
}

// pollDevice polls the provider at the flow's interval while this replica
// holds the lease, until the flow ends or the broker closes. f and version
// are the record as this replica last wrote it.
func (fl *Flows) pollDevice(state string, f *Record, version uint64) {
	ctx := fl.runner.ctx
	for {
		if err := ctxwait.Sleep(ctx, f.Interval); err != nil {
			fl.releaseLease(state, f, version)
			return
		}
		now := fl.now()
		if !now.Before(f.ExpiresAt) {
			fl.failFlow(ctx, state, FlowExpired, "the user did not approve before the device code expired; start a new flow")
			return
		}
		lease := fl.opts.leaseFor(f.Interval)
		if f.LeaseUntil.Sub(now) < 2*lease/3 {
			renewed := *f
			renewed.LeaseUntil = now.Add(lease)
			v, err := fl.writeFlow(ctx, state, &renewed, version)
			if errors.Is(err, store.ErrConflict) {
				// Someone else wrote: a replica that took the lease over, a
				// sweep that expired the flow. Poll on only if it is still ours.
				cur, cv, rerr := fl.readFlow(ctx, state)
				if rerr != nil || !cur.Pending() || cur.Poller != fl.replicaID {
					return
				}
				f, version = cur, cv
				continue
			}
			if err != nil {
				fl.log.WarnContext(ctx, "device flow: cannot renew the poll lease; retrying", "credential", f.CredentialID, "err", err)
				if f.LeaseUntil.Sub(now) < lease/3 {
					continue // too little lease left to poll safely
				}
			} else {
				f, version = &renewed, v
			}
		}
		next, nextVersion, done := fl.pollOnce(ctx, state, f, version, lease)
		if done {
			return
		}
		f, version = next, nextVersion
	}
}

// pollOnce presents the device code once and acts on the answer. It reports
// done when the flow ended (or is no longer this replica's).
func (fl *Flows) pollOnce(ctx context.Context, state string, f *Record, version uint64, lease time.Duration) (*Record, uint64, bool) {
	// The credential as stored (one read per poll; flows are few), not this
	// replica's cached view: another replica may have deleted it, created
	// it again or changed its client secret since.
	cred, err := fl.flowCredential(ctx, f)
	if err != nil {
		if errors.Is(err, brokererr.ErrNotFound) {
			fl.failFlow(ctx, state, FlowRefused, credentialGoneDetail)
			return nil, 0, true
		}
		return f, version, false
	}
	// The call ends a third of the lease before the lease does, and is not
	// cut by a shutdown: an approval answered but not received would cost
	// the user a new flow.
	now := fl.now()
	budget := min(f.LeaseUntil.Sub(now)-lease/3, maxDevicePoll)
	if budget <= 0 {
		return f, version, false
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), budget)
	sent := fl.now()
	tok, err := fl.provider.PollDeviceToken(pctx, cred.Endpoint, cred.Client, f.DeviceCode)
	cancel()
	tok.Restamp(sent)
	var pe *provider.Error
	switch {
	case err == nil:
		fl.redeemDevice(audit.WithActor(ctx, f.Actor), state, cred, tok)
		return nil, 0, true
	case errors.Is(err, provider.ErrAuthorizationPending):
		return f, version, false
	case errors.Is(err, provider.ErrSlowDown):
		slower := *f
		slower.Interval = min(f.Interval+slowDownStep, maxDeviceInterval)
		v, werr := fl.writeFlow(ctx, state, &slower, version)
		if werr != nil {
			// Poll slower anyway; the next lease renewal re-reads.
			f.Interval = slower.Interval
			return f, version, false
		}
		fl.log.InfoContext(ctx, "device flow: the provider asked to slow down", "credential", f.CredentialID, "interval", slower.Interval)
		return &slower, v, false
	case errors.Is(err, provider.ErrAccessDenied):
		fl.log.InfoContext(ctx, "device flow denied by the user", "credential", f.CredentialID)
		fl.failFlow(ctx, state, FlowDenied, DeniedDetail)
		return nil, 0, true
	case errors.Is(err, provider.ErrExpiredToken), errors.Is(err, provider.ErrInvalidGrant):
		fl.log.InfoContext(ctx, "device flow expired at the provider", "credential", f.CredentialID)
		fl.failFlow(ctx, state, FlowExpired, "the provider no longer accepts the device code (expired or already used); start a new flow")
		return nil, 0, true
	case errors.As(err, &pe) && pe.Outcome == provider.OutcomeRejected && errors.Is(err, provider.ErrInvalidClient):
		fl.log.WarnContext(ctx, "device flow: the provider refused the client", "credential", f.CredentialID, "err", err)
		fl.failFlow(ctx, state, FlowRefused, fmt.Sprintf("the provider refused the client (%s): %s", pe.Code, brokererr.ClientRejectedDetail(pe, "when polling the device flow")))
		return nil, 0, true
	case errors.As(err, &pe) && pe.Outcome == provider.OutcomeRejected:
		fl.log.WarnContext(ctx, "device flow refused by the provider", "credential", f.CredentialID, "err", err)
		fl.failFlow(ctx, state, FlowRefused, fmt.Sprintf("the provider refused the device flow (%s)", pe.Code))
		return nil, 0, true
	default:
		// Not answered, or no clear answer: poll again at the interval
		// until the flow expires.
		fl.log.WarnContext(ctx, "device flow: poll failed; polling again", "credential", f.CredentialID, "err", err)
		return f, version, false
	}
}

// redeemDevice installs the family of an approved device flow into the
// credential's incarnation the flow was started for (cred, as stored when
// the grant was polled).
func (fl *Flows) redeemDevice(ctx context.Context, state string, cred Credential, tok *provider.Token) {
	if tok.RefreshToken == "" {
		fl.log.WarnContext(ctx, "device flow refused: the provider issued no refresh token", "credential", cred.ID)
		fl.failFlow(ctx, state, FlowRefused, noRefreshTokenDetail)
		return
	}
	// The provider spent the device code: the tokens exist only here until
	// the family is stored, so neither a shutdown nor a slow store may cut
	// the install short.
	pctx, cancel := persistContext(ctx)
	defer cancel()
	var (
		act Activation
		err error
	)
	for attempt := range installTries {
		act, err = fl.core.Install(pctx, cred.ID, cred.Incarnation, tok)
		if err == nil || errors.Is(err, brokererr.ErrNotFound) {
			break
		}
		if serr := ctxwait.Sleep(pctx, fl.opts.RetryBase<<min(attempt, 8)); serr != nil {
			break
		}
	}
	if err != nil {
		fl.revokeUninstalled(pctx, cred, tok)
	}
	if errors.Is(err, brokererr.ErrNotFound) {
		fl.log.WarnContext(ctx, "device flow approved for a credential that was deleted meanwhile; nothing installed", "credential", cred.ID)
		fl.failFlow(ctx, state, FlowRefused, credentialGoneDetail)
		return
	}
	if err != nil {
		fl.log.ErrorContext(ctx, "DEVICE FLOW APPROVED BUT THE NEW FAMILY COULD NOT BE STORED: start a new flow", "credential", cred.ID, "err", err)
		fl.failFlow(ctx, state, FlowRefused, "the approved grant could not be stored (store unavailable); start a new flow")
		return
	}
	fl.completeFlow(ctx, state, act)
}

// releaseLease gives up this replica's lease at shutdown, so another
// replica's next sweep takes the poll over without waiting for it to
// expire. Best effort: a lost race or a store error leaves the lease to
// expire.
func (fl *Flows) releaseLease(state string, f *Record, version uint64) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(fl.runner.ctx), 5*time.Second)
	defer cancel()
	released := *f
	released.Poller, released.LeaseUntil = "", time.Time{}
	_, _ = fl.writeFlow(ctx, state, &released, version)
}

// noRefreshTokenDetail explains a grant that cannot be rotated.
const noRefreshTokenDetail = "the provider issued no refresh token, so there is nothing to rotate; request the refresh_token/offline_access scope (offline for some servers)"
