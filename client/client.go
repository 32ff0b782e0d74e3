// Package client is the Go client for Rotavault's TokenVaultService: what a
// consumer needs to get access tokens and to learn that it must stop using
// them.
package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// ErrReauthenticationRequired reports that the credential's token family is
// revoked or was never installed: no retry helps until an operator runs
// Reauthenticate. Check with errors.Is.
var ErrReauthenticationRequired = errors.New("rotavault: reauthentication required")

// Token is an access token handed out by Rotavault.
type Token struct {
	AccessToken string
	TokenType   string
	InstanceURL string
	Expiry      time.Time
	FamilyID    string
	Generation  uint64
	Fingerprint string
}

// Client calls a Rotavault server. Safe for concurrent use; its zero value is
// not usable: create it with New.
type Client struct {
	vault rotavaultv1.TokenVaultServiceClient
}

// New returns a client using conn, which the caller owns and closes.
func New(conn grpc.ClientConnInterface) *Client {
	return &Client{vault: rotavaultv1.NewTokenVaultServiceClient(conn)}
}

// TokenOption adjusts a token request.
type TokenOption interface {
	apply(*rotavaultv1.GetAccessTokenRequest)
}

type tokenOptionFunc func(*rotavaultv1.GetAccessTokenRequest)

func (f tokenOptionFunc) apply(r *rotavaultv1.GetAccessTokenRequest) { f(r) }

// WithMinRemaining asks for a token with at least d of lifetime left.
func WithMinRemaining(d time.Duration) TokenOption {
	return tokenOptionFunc(func(r *rotavaultv1.GetAccessTokenRequest) { r.MinRemainingLifetime = durationpb.New(d) })
}

// WithRejected reports that a resource server refused tok (for example with
// HTTP 401): Rotavault then hands out a newer token if tok is still current.
func WithRejected(tok Token) TokenOption {
	return tokenOptionFunc(func(r *rotavaultv1.GetAccessTokenRequest) {
		r.RejectedToken = &rotavaultv1.RejectedToken{Token: &rotavaultv1.RejectedToken_Fingerprint{Fingerprint: tok.Fingerprint}}
	})
}

// Token returns an access token for credentialID. A revoked family is
// ErrReauthenticationRequired (wrapping the gRPC status); other errors are
// gRPC statuses.
func (c *Client) Token(ctx context.Context, credentialID string, opts ...TokenOption) (Token, error) {
	req := &rotavaultv1.GetAccessTokenRequest{CredentialId: credentialID}
	for _, o := range opts {
		o.apply(req)
	}
	resp, err := c.vault.GetAccessToken(ctx, req)
	if err != nil {
		if reason(err) == "REAUTHENTICATION_REQUIRED" {
			return Token{}, fmt.Errorf("%w: %w", ErrReauthenticationRequired, err)
		}
		return Token{}, err
	}
	return Token{
		AccessToken: resp.GetAccessToken(),
		TokenType:   resp.GetTokenType(),
		InstanceURL: resp.GetInstanceUrl(),
		Expiry:      resp.GetExpireTime().AsTime(),
		FamilyID:    resp.GetFamilyId(),
		Generation:  resp.GetGeneration(),
		Fingerprint: resp.GetFingerprint(),
	}, nil
}

func reason(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return ""
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}
