package broker

import "github.com/rotavault/rotavault/broker/authflow"

// The authorization flows (code, device, callback) are package authflow;
// the broker starts them and installs the families they bring (flowCore,
// reauth.go). The transport drives them directly (server.AuthFlows).

// Flows returns the broker's authorization flows, started with it and
// stopped by Close.
func (b *Broker) Flows() *authflow.Flows { return b.flows }
