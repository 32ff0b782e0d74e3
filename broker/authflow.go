package broker

import (
	"context"
	"time"

	"github.com/rotavault/rotavault/broker/authflow"
)

// The authorization flows (code, device, callback) are package authflow;
// the broker starts them, installs the families they bring (flowCore,
// reauth.go) and answers for them to the transport.

// StartAuthorization begins an authorization-code flow with PKCE and
// returns where to send the user; see authflow.Flows.StartAuthorization.
func (b *Broker) StartAuthorization(ctx context.Context, id, redirectURI string, scopes []string) (authflow.PendingAuthorization, error) {
	return b.flows.StartAuthorization(ctx, id, redirectURI, scopes)
}

// CompleteAuthorization exchanges the code of a started flow and installs
// the new family; see authflow.Flows.CompleteAuthorization.
func (b *Broker) CompleteAuthorization(ctx context.Context, id, state, code string) (authflow.Activation, error) {
	return b.flows.CompleteAuthorization(ctx, id, state, code)
}

// CompleteCallback finishes, on any replica, a flow started for the
// server's own callback; see authflow.Flows.CompleteCallback.
func (b *Broker) CompleteCallback(ctx context.Context, cb authflow.Callback) (authflow.Activation, error) {
	return b.flows.CompleteCallback(ctx, cb)
}

// StartDeviceAuthorization begins a device flow for the credential; see
// authflow.Flows.StartDeviceAuthorization.
func (b *Broker) StartDeviceAuthorization(ctx context.Context, id string, scopes []string) (authflow.DevicePending, error) {
	return b.flows.StartDeviceAuthorization(ctx, id, scopes)
}

// CheckAuthorization reports how a flow is doing, waiting up to wait for it
// to finish; see authflow.Flows.CheckAuthorization.
func (b *Broker) CheckAuthorization(ctx context.Context, id, state string, wait time.Duration) (authflow.FlowProgress, error) {
	return b.flows.CheckAuthorization(ctx, id, state, wait)
}

// StopWaiting makes every AuthorizationCheck waiting on this replica answer
// now, and later ones answer without waiting. Call it when a graceful
// shutdown begins. Safe to call more than once.
func (b *Broker) StopWaiting() { b.flows.StopWaiting() }
