package server

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker"
	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/authflow"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/notice"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// TokenBroker is what the token service needs of the rotation logic.
type TokenBroker interface {
	GetAccessToken(ctx context.Context, req access.Request) (access.Token, error)
	ImportRefreshToken(ctx context.Context, id, refreshToken string) (authflow.Activation, error)
	Subscribe(ctx context.Context, credentialIDs []string, cursor string) (*notice.Subscription, error)
	RevokeCredential(ctx context.Context, id, reason string) (broker.Revocation, error)
}

// AuthFlows is what the token service needs of the authorization flows;
// *authflow.Flows is one.
type AuthFlows interface {
	StartAuthorization(ctx context.Context, id, redirectURI string, scopes []string) (authflow.PendingAuthorization, error)
	CompleteAuthorization(ctx context.Context, id, state, code string) (authflow.Activation, error)
	StartDeviceAuthorization(ctx context.Context, id string, scopes []string) (authflow.DevicePending, error)
	CheckAuthorization(ctx context.Context, id, state string, wait time.Duration) (authflow.FlowProgress, error)
}

// TokenVaultConfig holds the token service's dependencies.
type TokenVaultConfig struct {
	Broker TokenBroker
	// Flows runs the code and device flows of Reauthenticate.
	Flows  AuthFlows
	Logger *slog.Logger // nil: discard
	// issuance, when set, counts the tokens handed to each caller;
	// refused the calls refused.
	issuance *issuanceCounter
	refused  refusedTokens
}

// TokenVaultService implements rotavault.v1.TokenVaultService. Safe for
// concurrent use.
type TokenVaultService struct {
	rotavaultv1.UnimplementedTokenVaultServiceServer
	broker   TokenBroker
	flows    AuthFlows
	log      *slog.Logger
	issuance *issuanceCounter
	refused  refusedTokens
}

// NewTokenVaultService returns the token service.
func NewTokenVaultService(cfg TokenVaultConfig) *TokenVaultService {
	return &TokenVaultService{broker: cfg.Broker, flows: cfg.Flows, log: loggerOrDiscard(cfg.Logger), issuance: cfg.issuance, refused: cfg.refused}
}

// GetAccessToken implements rotavault.v1.TokenVaultService.
func (s *TokenVaultService) GetAccessToken(ctx context.Context, req *rotavaultv1.GetAccessTokenRequest) (*rotavaultv1.GetAccessTokenResponse, error) {
	res, err := s.getAccessToken(ctx, req)
	if err != nil {
		s.refused.count(err)
	}
	return res, err
}

func (s *TokenVaultService) getAccessToken(ctx context.Context, req *rotavaultv1.GetAccessTokenRequest) (*rotavaultv1.GetAccessTokenResponse, error) {
	if d := req.GetMinRemainingLifetime(); d != nil && !d.IsValid() {
		return nil, toStatus(ctx, s.log, &brokererr.InvalidArgumentError{Field: "min_remaining_lifetime", Reason: "not a valid duration"})
	}
	breq := access.Request{
		CredentialID: req.GetCredentialId(),
		MinRemaining: req.GetMinRemainingLifetime().AsDuration(),
	}
	if r := req.GetRejectedToken(); r != nil {
		switch t := r.GetToken().(type) {
		case *rotavaultv1.RejectedToken_Generation:
			breq.Rejected = &access.RejectedToken{Generation: t.Generation}
		case *rotavaultv1.RejectedToken_Fingerprint:
			breq.Rejected = &access.RejectedToken{Fingerprint: t.Fingerprint}
		default:
			return nil, toStatus(ctx, s.log, &brokererr.InvalidArgumentError{Field: "rejected_token", Reason: "set generation or fingerprint"})
		}
	}
	tok, err := s.broker.GetAccessToken(ctx, breq)
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	if s.issuance != nil {
		// The actor the interceptors set for every audit record of this
		// call, so the summary names the caller as the broker's records do.
		s.issuance.add(audit.Actor(ctx), breq.CredentialID)
	}
	return accessTokenToProto(&tok), nil
}

// RevokeCredential implements rotavault.v1.TokenVaultService.
func (s *TokenVaultService) RevokeCredential(ctx context.Context, req *rotavaultv1.RevokeCredentialRequest) (*rotavaultv1.RevokeCredentialResponse, error) {
	r, err := s.broker.RevokeCredential(ctx, req.GetCredentialId(), req.GetReason())
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	return &rotavaultv1.RevokeCredentialResponse{
		FamilyId:           r.FamilyID,
		Generation:         r.Generation,
		ProviderRevocation: providerRevocationToProto(r.ProviderRevocation),
		AlreadyRevoked:     r.AlreadyRevoked,
	}, nil
}

// Reauthenticate implements rotavault.v1.TokenVaultService.
func (s *TokenVaultService) Reauthenticate(ctx context.Context, req *rotavaultv1.ReauthenticateRequest) (*rotavaultv1.ReauthenticateResponse, error) {
	id := req.GetCredentialId()
	var (
		act authflow.Activation
		err error
	)
	switch flow := req.GetFlow().(type) {
	case *rotavaultv1.ReauthenticateRequest_AuthorizationCodeStart:
		p, err := s.flows.StartAuthorization(ctx, id, flow.AuthorizationCodeStart.GetRedirectUri(), flow.AuthorizationCodeStart.GetScopes())
		if err != nil {
			return nil, toStatus(ctx, s.log, err)
		}
		return authorizationPendingToProto(&p), nil
	case *rotavaultv1.ReauthenticateRequest_AuthorizationCodeComplete:
		act, err = s.flows.CompleteAuthorization(ctx, id, flow.AuthorizationCodeComplete.GetState(), flow.AuthorizationCodeComplete.GetCode())
	case *rotavaultv1.ReauthenticateRequest_RefreshTokenImport:
		act, err = s.broker.ImportRefreshToken(ctx, id, flow.RefreshTokenImport.GetRefreshToken())
	case *rotavaultv1.ReauthenticateRequest_DeviceAuthorizationStart:
		p, err := s.flows.StartDeviceAuthorization(ctx, id, flow.DeviceAuthorizationStart.GetScopes())
		if err != nil {
			return nil, toStatus(ctx, s.log, err)
		}
		return devicePendingToProto(&p), nil
	case *rotavaultv1.ReauthenticateRequest_AuthorizationCheck:
		w := flow.AuthorizationCheck.GetWait()
		if w != nil && !w.IsValid() {
			return nil, toStatus(ctx, s.log, &brokererr.InvalidArgumentError{Field: "authorization_check.wait", Reason: "not a valid duration"})
		}
		p, err := s.flows.CheckAuthorization(ctx, id, flow.AuthorizationCheck.GetState(), w.AsDuration())
		if err != nil {
			return nil, toStatus(ctx, s.log, err)
		}
		switch {
		case p.Authorization != nil:
			return authorizationPendingToProto(p.Authorization), nil
		case p.Device != nil:
			return devicePendingToProto(p.Device), nil
		}
		act = *p.Activation
	default:
		err = &brokererr.InvalidArgumentError{Field: "flow", Reason: "choose a flow: authorization_code_start, authorization_code_complete, refresh_token_import, device_authorization_start or authorization_check"}
	}
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	return &rotavaultv1.ReauthenticateResponse{Result: &rotavaultv1.ReauthenticateResponse_FamilyActivated{
		FamilyActivated: &rotavaultv1.FamilyActivated{FamilyId: act.FamilyID, Generation: act.Generation, ActivateTime: timestamppb.New(act.ActivatedAt), Unproven: act.Unproven},
	}}, nil
}

// WatchRevocations implements rotavault.v1.TokenVaultService.
func (s *TokenVaultService) WatchRevocations(req *rotavaultv1.WatchRevocationsRequest, stream grpc.ServerStreamingServer[rotavaultv1.WatchRevocationsResponse]) error {
	ctx := stream.Context()
	sub, err := s.broker.Subscribe(ctx, req.GetCredentialIds(), req.GetCursor())
	if err != nil {
		return toStatus(ctx, s.log, err)
	}
	defer sub.Close()
	if err := stream.Send(&rotavaultv1.WatchRevocationsResponse{Event: &rotavaultv1.WatchRevocationsResponse_Started{
		Started: &rotavaultv1.WatchStarted{Cursor: sub.StartCursor},
	}}); err != nil {
		return err
	}
	for {
		n, err := sub.Next(ctx)
		if err != nil {
			if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
				return nil // the client went away
			}
			return toStatus(ctx, s.log, err)
		}
		if err := stream.Send(&rotavaultv1.WatchRevocationsResponse{Event: &rotavaultv1.WatchRevocationsResponse_Notice{Notice: noticeToProto(n)}}); err != nil {
			return err
		}
	}
}

func loggerOrDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
