package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rotavault/rotavault/audit"
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

func devicePending(state string, f *flowRecord) *DevicePending {
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
// *InvalidArgumentError, ErrNotFound, ErrClientRejected, *UnavailableError.
func (b *Broker) StartDeviceAuthorization(ctx context.Context, id string, scopes []string) (DevicePending, error) {
	if err := b.validateID(id); err != nil {
		return DevicePending{}, err
	}
	start, err := b.beginFlow(ctx, id, scopes, func(spec Spec, ep provider.Endpoint) error {
		if spec.ProviderKind == ProviderOAuth2 && ep.DeviceAuthorizationURL == "" {
			return invalid("spec.device_authorization_url", "the credential has no device authorization endpoint (RFC 8628); set it, or use another flow")
		}
		return nil
	})
	if err != nil {
		return DevicePending{}, err
	}
	d, err := b.provider.StartDeviceAuthorization(ctx, start.ep, start.cred.Spec.clientCredentials(), start.scopes)
	if err != nil {
		var pe *provider.Error
		switch {
		case errors.As(err, &pe) && pe.Outcome == provider.OutcomeRejected && errors.Is(err, provider.ErrInvalidClient):
			return DevicePending{}, fmt.Errorf("%w: the provider refused the client when starting a device flow (%s)", ErrClientRejected, pe.Code)
		case errors.As(err, &pe) && pe.Outcome == provider.OutcomeRejected:
			return DevicePending{}, invalid("device_authorization_start", "the provider refused to start a device flow (%s); is the device flow enabled for the app?", pe.Code)
		}
		return DevicePending{}, &UnavailableError{Component: ComponentProvider, RetryAfter: time.Second, Err: err}
	}
	now := b.opts.now()
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
	f := &flowRecord{
		Kind: FlowDevice, CredentialID: id, Incarnation: start.cred.Incarnation, Scopes: start.scopes,
		StartedAt: now, ExpiresAt: now.Add(lifetime), Status: flowPending, Actor: audit.Actor(ctx),
		DeviceCode: d.DeviceCode, UserCode: d.UserCode,
		VerificationURI: d.VerificationURI, VerificationURIComplete: d.VerificationURIComplete,
		Interval: interval, Poller: b.opts.replicaID, LeaseUntil: now.Add(b.opts.flow.leaseFor(interval)),
	}
	version, err := b.writeFlow(ctx, state, f, 0)
	if err != nil {
		return DevicePending{}, err
	}
	b.log.InfoContext(ctx, "device flow started", "credential", id, "expires_at", f.ExpiresAt, "interval", interval)
	b.startPoller(state, f, version)
	return *devicePending(state, f), nil
}

// takeOverDevice takes the lease of a device flow whose poller is gone (its
// lease ran out, or it released it) and polls it here.
func (b *Broker) takeOverDevice(ctx context.Context, state string, f *flowRecord, version uint64) {
	if b.flows.isPolling(state) || !f.pending() || f.kind() != FlowDevice {
		return
	}
	now := b.opts.now()
	if now.Before(f.LeaseUntil) && f.Poller != "" {
		return
	}
	taken := *f
	taken.Poller, taken.LeaseUntil = b.opts.replicaID, now.Add(b.opts.flow.leaseFor(f.Interval))
	v, err := b.writeFlow(ctx, state, &taken, version)
	if err != nil {
		return // another replica moved first, or the store is down: the next sweep decides
	}
	if f.Poller != "" && f.Poller != b.opts.replicaID {
		b.log.InfoContext(ctx, "took over a device flow's polling", "credential", f.CredentialID, "previous_poller", f.Poller)
	}
	b.startPoller(state, &taken, v)
}

// startPoller runs pollDevice in a goroutine the broker owns, once per
// flow on this replica.
func (b *Broker) startPoller(state string, f *flowRecord, version uint64) {
	if !b.flows.claimLocal(state) {
		return
	}
	own := *f // the poller's to change
	if !b.goTracked(func() {
		defer b.flows.dropLocal(state)
		b.pollDevice(state, &own, version)
	}) {
		b.flows.dropLocal(state)
	}
}

// pollDevice polls the provider at the flow's interval while this replica
// holds the lease, until the flow ends or the broker closes. f and version
// are the record as this replica last wrote it.
func (b *Broker) pollDevice(state string, f *flowRecord, version uint64) {
	ctx := b.flows.ctx
	for {
		if err := ctxwait.Sleep(ctx, f.Interval); err != nil {
			b.releaseLease(state, f, version)
			return
		}
		now := b.opts.now()
		if !now.Before(f.ExpiresAt) {
			b.failFlow(ctx, state, FlowExpired, "the user did not approve before the device code expired; start a new flow")
			return
		}
		lease := b.opts.flow.leaseFor(f.Interval)
		if f.LeaseUntil.Sub(now) < 2*lease/3 {
			renewed := *f
			renewed.LeaseUntil = now.Add(lease)
			v, err := b.writeFlow(ctx, state, &renewed, version)
			if errors.Is(err, store.ErrConflict) {
				// Someone else wrote: a replica that took the lease over, a
				// sweep that expired the flow. Poll on only if it is still ours.
				cur, cv, rerr := b.readFlow(ctx, state)
				if rerr != nil || !cur.pending() || cur.Poller != b.opts.replicaID {
					return
				}
				f, version = cur, cv
				continue
			}
			if err != nil {
				b.log.WarnContext(ctx, "device flow: cannot renew the poll lease; retrying", "credential", f.CredentialID, "err", err)
				if f.LeaseUntil.Sub(now) < lease/3 {
					continue // too little lease left to poll safely
				}
			} else {
				f, version = &renewed, v
			}
		}
		next, nextVersion, done := b.pollOnce(ctx, state, f, version, lease)
		if done {
			return
		}
		f, version = next, nextVersion
	}
}

// pollOnce presents the device code once and acts on the answer. It reports
// done when the flow ended (or is no longer this replica's).
func (b *Broker) pollOnce(ctx context.Context, state string, f *flowRecord, version uint64, lease time.Duration) (*flowRecord, uint64, bool) {
	// The credential as stored (one read per poll; flows are few), not this
	// replica's cached view: another replica may have deleted it, created
	// it again or changed its client secret since.
	e, cred, err := b.flowCredential(ctx, f)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			b.failFlow(ctx, state, FlowRefused, credentialGoneDetail)
			return nil, 0, true
		}
		return f, version, false
	}
	spec := cred.Spec
	// The call ends a third of the lease before the lease does, and is not
	// cut by a shutdown: an approval answered but not received would cost
	// the user a new flow.
	now := b.opts.now()
	budget := min(f.LeaseUntil.Sub(now)-lease/3, maxDevicePoll)
	if budget <= 0 {
		return f, version, false
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), budget)
	sent := b.opts.now()
	tok, err := b.provider.PollDeviceToken(pctx, spec.endpoint(), spec.clientCredentials(), f.DeviceCode)
	cancel()
	restamp(tok, sent)
	var pe *provider.Error
	switch {
	case err == nil:
		b.redeemDevice(audit.WithActor(ctx, f.Actor), state, f.Incarnation, e, tok)
		return nil, 0, true
	case errors.Is(err, provider.ErrAuthorizationPending):
		return f, version, false
	case errors.Is(err, provider.ErrSlowDown):
		slower := *f
		slower.Interval = min(f.Interval+slowDownStep, maxDeviceInterval)
		v, werr := b.writeFlow(ctx, state, &slower, version)
		if werr != nil {
			// Poll slower anyway; the next lease renewal re-reads.
			f.Interval = slower.Interval
			return f, version, false
		}
		b.log.InfoContext(ctx, "device flow: the provider asked to slow down", "credential", f.CredentialID, "interval", slower.Interval)
		return &slower, v, false
	case errors.Is(err, provider.ErrAccessDenied):
		b.log.InfoContext(ctx, "device flow denied by the user", "credential", f.CredentialID)
		b.failFlow(ctx, state, FlowDenied, deniedDetail)
		return nil, 0, true
	case errors.Is(err, provider.ErrExpiredToken), errors.Is(err, provider.ErrInvalidGrant):
		b.log.InfoContext(ctx, "device flow expired at the provider", "credential", f.CredentialID)
		b.failFlow(ctx, state, FlowExpired, "the provider no longer accepts the device code (expired or already used); start a new flow")
		return nil, 0, true
	case errors.As(err, &pe) && pe.Outcome == provider.OutcomeRejected:
		b.log.WarnContext(ctx, "device flow refused by the provider", "credential", f.CredentialID, "err", err)
		b.failFlow(ctx, state, FlowRefused, fmt.Sprintf("the provider refused the device flow (%s)", pe.Code))
		return nil, 0, true
	default:
		// Not answered, or no clear answer: poll again at the interval
		// until the flow expires.
		b.log.WarnContext(ctx, "device flow: poll failed; polling again", "credential", f.CredentialID, "err", err)
		return f, version, false
	}
}

// redeemDevice installs the family of an approved device flow into the
// credential's incarnation the flow was started for.
func (b *Broker) redeemDevice(ctx context.Context, state, incarnation string, e *entry, tok *provider.Token) {
	if tok.RefreshToken == "" {
		b.log.WarnContext(ctx, "device flow refused: the provider issued no refresh token", "credential", e.id)
		b.failFlow(ctx, state, FlowRefused, noRefreshTokenDetail)
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
	for attempt := range storeWriteTries {
		act, err = b.installFamily(pctx, e, incarnation, tok.RefreshToken, tok, true)
		if err == nil || errors.Is(err, ErrNotFound) {
			break
		}
		if serr := ctxwait.Sleep(pctx, b.backoff(attempt, 0)); serr != nil {
			break
		}
	}
	if err != nil {
		b.revokeUninstalled(pctx, e.view.Load().cred.Spec, tok)
	}
	if errors.Is(err, ErrNotFound) {
		b.log.WarnContext(ctx, "device flow approved for a credential that was deleted meanwhile; nothing installed", "credential", e.id)
		b.failFlow(ctx, state, FlowRefused, credentialGoneDetail)
		return
	}
	if err != nil {
		b.log.ErrorContext(ctx, "DEVICE FLOW APPROVED BUT THE NEW FAMILY COULD NOT BE STORED: start a new flow", "credential", e.id, "err", err)
		b.failFlow(ctx, state, FlowRefused, "the approved grant could not be stored (store unavailable); start a new flow")
		return
	}
	b.completeFlow(ctx, state, act)
}

// releaseLease gives up this replica's lease at shutdown, so another
// replica's next sweep takes the poll over without waiting for it to
// expire. Best effort: a lost race or a store error leaves the lease to
// expire.
func (b *Broker) releaseLease(state string, f *flowRecord, version uint64) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(b.flows.ctx), 5*time.Second)
	defer cancel()
	released := *f
	released.Poller, released.LeaseUntil = "", time.Time{}
	_, _ = b.writeFlow(ctx, state, &released, version)
}

// noRefreshTokenDetail explains a grant that cannot be rotated.
const noRefreshTokenDetail = "the provider issued no refresh token, so there is nothing to rotate; request the refresh_token/offline_access scope (offline for some servers)"
