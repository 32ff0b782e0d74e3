package provider_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/providersim"
)

// deviceEndpoint is the simulator's endpoint in one of the two dialects.
func deviceEndpoint(sim *providersim.Server, rfc8628 bool) provider.Endpoint {
	ep := provider.SalesforceEndpoint(sim.URL())
	if rfc8628 {
		ep.Kind = provider.KindOAuth2
		ep.DeviceAuthorizationURL = sim.URL() + providersim.DeviceAuthorizationPath
	}
	return ep
}

// The device flow in both dialects: start, pending while the user has not
// acted, tokens once after approval, and the device code spent after that.
func TestDeviceFlowApproved(t *testing.T) {
	for _, rfc8628 := range []bool{false, true} {
		t.Run(fmt.Sprintf("rfc8628=%v", rfc8628), func(t *testing.T) {
			sim, _, cc := setupSimTest(t, providersim.Config{DeviceInterval: time.Second})
			ep := deviceEndpoint(sim, rfc8628)
			c := provider.New(nil)
			ctx := context.Background()
			d, err := c.StartDeviceAuthorization(ctx, ep, cc, []string{"api", "refresh_token"})
			if err != nil {
				t.Fatalf("StartDeviceAuthorization: %v", err)
			}
			if d.DeviceCode == "" || d.UserCode == "" || d.Interval != time.Second ||
				d.VerificationURI != sim.URL()+providersim.VerificationPath {
				t.Fatalf("device authorization %v: want codes, the simulator's verification page and a 1s interval", d)
			}
			// Salesforce's answer has no expiry and no complete URI; RFC 8628's has both.
			if rfc8628 != (d.ExpiresIn > 0 && strings.Contains(d.VerificationURIComplete, "user_code=")) {
				t.Errorf("expires_in %s, verification_uri_complete %q: unexpected for rfc8628=%v", d.ExpiresIn, d.VerificationURIComplete, rfc8628)
			}

			_, err = c.PollDeviceToken(ctx, ep, cc, d.DeviceCode)
			if !errors.Is(err, provider.ErrAuthorizationPending) {
				t.Fatalf("poll before approval: %v, want authorization_pending", err)
			}
			if err := sim.ApproveDevice(d.UserCode); err != nil {
				t.Fatal(err)
			}
			time.Sleep(d.Interval) // RFC 8628 §3.5: a client waits the interval between polls
			tok, err := c.PollDeviceToken(ctx, ep, cc, d.DeviceCode)
			if err != nil {
				t.Fatalf("poll after approval: %v", err)
			}
			if tok.RefreshToken == "" || tok.AccessToken == "" {
				t.Fatalf("token %v: want a refresh and an access token", tok)
			}
			if !rfc8628 && tok.SignatureStatus != provider.SignatureValid {
				t.Errorf("Salesforce signature %v, want valid", tok.SignatureStatus)
			}
			time.Sleep(d.Interval)
			_, err = c.PollDeviceToken(ctx, ep, cc, d.DeviceCode)
			if !errors.Is(err, provider.ErrInvalidGrant) {
				t.Fatalf("poll of a redeemed device code: %v, want invalid_grant", err)
			}
			if st := sim.Stats(); st.DeviceTokenExchanges != 1 || st.DeviceAuthorizations != 1 {
				t.Errorf("stats %+v: want one device flow, one exchange", st)
			}
			checkNoDeviceCode(t, d.DeviceCode, err)
		})
	}
}

func TestDeviceFlowDeniedExpiredAndSlowDown(t *testing.T) {
	clk := fakeclock.New(time.Now())
	sim, _, cc := setupSimTest(t, providersim.Config{DeviceInterval: time.Second, DeviceCodeLifetime: time.Minute, Now: clk.Now})
	c := provider.New(nil)
	ctx := context.Background()
	start := func(rfc8628 bool) (provider.Endpoint, *provider.DeviceAuthorization) {
		ep := deviceEndpoint(sim, rfc8628)
		d, err := c.StartDeviceAuthorization(ctx, ep, cc, nil)
		if err != nil {
			t.Fatal(err)
		}
		return ep, d
	}

	t.Run("denied", func(t *testing.T) {
		ep, d := start(true)
		if err := sim.DenyDevice(d.UserCode); err != nil {
			t.Fatal(err)
		}
		_, err := c.PollDeviceToken(ctx, ep, cc, d.DeviceCode)
		if !errors.Is(err, provider.ErrAccessDenied) || asProviderError(t, err).Outcome != provider.OutcomeRejected {
			t.Fatalf("poll after denial: %v, want a rejected access_denied", err)
		}
		checkNoDeviceCode(t, d.DeviceCode, err)
	})
	t.Run("slow down", func(t *testing.T) {
		ep, d := start(false)
		sim.SlowDownDevicePolls(1)
		_, err := c.PollDeviceToken(ctx, ep, cc, d.DeviceCode)
		if !errors.Is(err, provider.ErrSlowDown) {
			t.Fatalf("poll: %v, want slow_down", err)
		}
		// Polling again at once is too fast by the provider's own rule.
		_, err = c.PollDeviceToken(ctx, ep, cc, d.DeviceCode)
		if !errors.Is(err, provider.ErrSlowDown) {
			t.Fatalf("immediate second poll: %v, want slow_down", err)
		}
	})
	t.Run("expired", func(t *testing.T) {
		for _, rfc8628 := range []bool{false, true} {
			ep, d := start(rfc8628)
			clk.Add(time.Minute)
			_, err := c.PollDeviceToken(ctx, ep, cc, d.DeviceCode)
			want := provider.ErrInvalidGrant // Salesforce: every dead grant
			if rfc8628 {
				want = provider.ErrExpiredToken
			}
			if !errors.Is(err, want) {
				t.Errorf("rfc8628=%v: poll after expiry: %v, want %v", rfc8628, err, want)
			}
			if err := sim.ApproveDevice(d.UserCode); !errors.Is(err, providersim.ErrUnknownUserCode) {
				t.Errorf("approving an expired user code: %v, want ErrUnknownUserCode", err)
			}
		}
	})
}

func TestDeviceFlowArgumentsAndRedaction(t *testing.T) {
	c := provider.New(nil)
	cc := provider.ClientCredentials{ClientID: "id"}
	// A generic provider without a device authorization endpoint is refused
	// before anything is sent.
	_, err := c.StartDeviceAuthorization(context.Background(), provider.Endpoint{Kind: provider.KindOAuth2, TokenURL: "https://as.example/token"}, cc, nil)
	if !errors.Is(err, provider.ErrInvalidArgument) {
		t.Errorf("start without a device authorization URL: %v, want ErrInvalidArgument", err)
	}
	_, err = c.PollDeviceToken(context.Background(), provider.SalesforceEndpoint("https://login.example"), cc, "")
	if !errors.Is(err, provider.ErrInvalidArgument) {
		t.Errorf("poll with an empty device code: %v, want ErrInvalidArgument", err)
	}

	const code = "DEVICE-CODE-5ecret-0123456789"
	d := provider.DeviceAuthorization{DeviceCode: code, UserCode: "BCDF-GHJK", VerificationURI: "https://as.example/device"}
	var logs strings.Builder
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("started", "device", d)
	for _, text := range []string{d.String(), fmt.Sprintf("%v %+v %#v %s %x", d, d, d, d, d), logs.String()} {
		if strings.Contains(text, code) {
			t.Errorf("printed device authorization holds the device code: %s", text)
		}
	}
	if !strings.Contains(d.String(), "BCDF-GHJK") {
		t.Error("String hides the user code, which the operator needs")
	}
}

func checkNoDeviceCode(t *testing.T, deviceCode string, err error) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), deviceCode) {
		t.Errorf("error %q holds the device code", err)
	}
}
