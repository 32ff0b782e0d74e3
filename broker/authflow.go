package broker

import (
	"context"
	"fmt"
	"time"

	"github.com/rotavault/rotavault/broker/internal/authflow"
)

// The authorization flows (code, device, callback) are package authflow;
// the broker starts them, installs the families they bring (flowCore,
// reauth.go) and keeps the names its callers use.

// FlowKind says how a pending flow reaches the user.
type FlowKind = authflow.FlowKind

// Kinds of flows.
const (
	FlowAuthorizationCode = authflow.FlowAuthorizationCode
	FlowDevice            = authflow.FlowDevice
)

// FlowFailure says why a flow ended without a new family.
type FlowFailure = authflow.FlowFailure

// Flow failures.
const (
	FlowDenied  = authflow.FlowDenied
	FlowExpired = authflow.FlowExpired
	FlowRefused = authflow.FlowRefused
)

type (
	// PendingAuthorization is a started authorization-code flow.
	PendingAuthorization = authflow.PendingAuthorization
	// DevicePending is a device flow waiting for the user.
	DevicePending = authflow.DevicePending
	// Activation reports a newly installed family.
	Activation = authflow.Activation
	// FlowProgress is a flow's state as AuthorizationCheck reports it.
	FlowProgress = authflow.FlowProgress
	// Callback is what the provider's redirect brought to the callback.
	Callback = authflow.Callback
	// AuthorizationError reports a flow that ended without a new family.
	AuthorizationError = authflow.AuthorizationError
)

// Errors of starting flows; see package authflow.
var (
	ErrCallbackNotConfigured = authflow.ErrCallbackNotConfigured
	ErrTooManyFlows          = authflow.ErrTooManyFlows
)

// Flow bounds and timing; see package authflow.
const (
	MaxPendingFlows              = authflow.MaxPendingFlows
	MaxPendingFlowsPerCredential = authflow.MaxPendingFlowsPerCredential
	MaxPendingFlowsPerActor      = authflow.MaxPendingFlowsPerActor
	MaxCheckWait                 = authflow.MaxCheckWait
	DefaultFlowSweepInterval     = authflow.DefaultFlowSweepInterval
	DefaultDeviceLease           = authflow.DefaultDeviceLease
	// ScopeNotAllowed is the InvalidArgumentError code of a flow asking
	// for a scope its credential was not configured with.
	ScopeNotAllowed = authflow.ScopeNotAllowed
)

// IsFlowState reports whether s has the form of a flow's state. The OAuth
// callback checks it before anything costs a store read.
func IsFlowState(s string) bool { return authflow.IsFlowState(s) }

// WithScopeWidening marks ctx as a caller who may start flows asking for
// scopes beyond the credential's: an admin. The transport sets it.
func WithScopeWidening(ctx context.Context) context.Context {
	return authflow.WithScopeWidening(ctx)
}

// WithFlowTiming sets how often the sweeping replica sweeps the pending flows (taking
// over device flows whose poller's lease ran out, expiring and deleting old
// ones; default 10s, one store List per sweep plus one read per flow) and
// the lease a device flow's poller holds (default 30s, at least three
// polling intervals). A dead poller is replaced within lease + sweep
// (plus up to a duty lease period when the replica that died was the one
// sweeping: duties.go).
func WithFlowTiming(sweep, lease time.Duration) Option {
	return func(o *options) error {
		if sweep < 10*time.Millisecond || sweep > time.Hour {
			return fmt.Errorf("broker: flow sweep interval %s out of range [10ms, 1h]", sweep)
		}
		if lease < 300*time.Millisecond || lease > 10*time.Minute {
			return fmt.Errorf("broker: device lease %s out of range [300ms, 10m]", lease)
		}
		o.flow.SweepInterval, o.flow.Lease = sweep, lease
		return nil
	}
}

// WithCallbackURL sets the server's own OAuth callback URL
// (<public URL>/oauth/callback), used by authorization-code flows started
// without a redirect URI. It must be https, or http on loopback, and be
// registered with each provider app.
func WithCallbackURL(u string) Option {
	return func(o *options) error {
		if err := ValidateEndpointURL(u); err != nil {
			return fmt.Errorf("broker: callback URL: %w", err)
		}
		o.flow.CallbackURL = u
		return nil
	}
}

// StartAuthorization begins an authorization-code flow with PKCE and
// returns where to send the user; see authflow.Flows.StartAuthorization.
func (b *Broker) StartAuthorization(ctx context.Context, id, redirectURI string, scopes []string) (PendingAuthorization, error) {
	return b.flows.StartAuthorization(ctx, id, redirectURI, scopes)
}

// CompleteAuthorization exchanges the code of a started flow and installs
// the new family; see authflow.Flows.CompleteAuthorization.
func (b *Broker) CompleteAuthorization(ctx context.Context, id, state, code string) (Activation, error) {
	return b.flows.CompleteAuthorization(ctx, id, state, code)
}

// CompleteCallback finishes, on any replica, a flow started for the
// server's own callback; see authflow.Flows.CompleteCallback.
func (b *Broker) CompleteCallback(ctx context.Context, cb Callback) (Activation, error) {
	return b.flows.CompleteCallback(ctx, cb)
}

// StartDeviceAuthorization begins a device flow for the credential; see
// authflow.Flows.StartDeviceAuthorization.
func (b *Broker) StartDeviceAuthorization(ctx context.Context, id string, scopes []string) (DevicePending, error) {
	return b.flows.StartDeviceAuthorization(ctx, id, scopes)
}

// CheckAuthorization reports how a flow is doing, waiting up to wait for it
// to finish; see authflow.Flows.CheckAuthorization.
func (b *Broker) CheckAuthorization(ctx context.Context, id, state string, wait time.Duration) (FlowProgress, error) {
	return b.flows.CheckAuthorization(ctx, id, state, wait)
}

// StopWaiting makes every AuthorizationCheck waiting on this replica answer
// now, and later ones answer without waiting. Call it when a graceful
// shutdown begins. Safe to call more than once.
func (b *Broker) StopWaiting() { b.flows.StopWaiting() }
