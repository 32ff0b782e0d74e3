package server

import (
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/authflow"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/detect"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/notice"
	"github.com/rotavault/rotavault/broker/registry"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

func timestampOrNil(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func durationOrNil(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

// accessTokenToProto is the answer to GetAccessToken.
func accessTokenToProto(tok *access.Token) *rotavaultv1.GetAccessTokenResponse {
	return &rotavaultv1.GetAccessTokenResponse{
		AccessToken:          tok.Token,
		TokenType:            tok.Type,
		InstanceUrl:          tok.InstanceURL,
		ExpireTime:           timestamppb.New(tok.ExpiresAt),
		IssueTime:            timestamppb.New(tok.IssuedAt),
		Scopes:               tok.Scopes,
		FamilyId:             tok.FamilyID,
		Generation:           tok.Generation,
		Fingerprint:          tok.Fingerprint,
		UseUntil:             timestampOrNil(tok.UseUntil),
		RejectedTokenOutcome: rejectedOutcomeToProto(tok.Rejected),
	}
}

func rejectedOutcomeToProto(o access.RejectedOutcome) rotavaultv1.RejectedTokenOutcome {
	switch o {
	case access.RejectedStale:
		return rotavaultv1.RejectedTokenOutcome_REJECTED_TOKEN_OUTCOME_STALE_REPORT
	case access.RejectedNoChange:
		return rotavaultv1.RejectedTokenOutcome_REJECTED_TOKEN_OUTCOME_NO_CHANGE
	case access.RejectedReplaced:
		return rotavaultv1.RejectedTokenOutcome_REJECTED_TOKEN_OUTCOME_TOKEN_REPLACED
	default:
		return rotavaultv1.RejectedTokenOutcome_REJECTED_TOKEN_OUTCOME_UNSPECIFIED
	}
}

func specFromProto(p *rotavaultv1.CredentialSpec) credspec.Spec {
	if p == nil {
		return credspec.Spec{}
	}
	return credspec.Spec{
		ProviderKind:     providerKindFromProto(p.GetProviderKind()),
		BaseURL:          p.GetBaseUrl(),
		TokenURL:         p.GetTokenUrl(),
		AuthorizeURL:     p.GetAuthorizeUrl(),
		RevocationURL:    p.GetRevocationUrl(),
		IntrospectionURL: p.GetIntrospectionUrl(),
		ClientID:         p.GetClientId(),
		ClientSecret:     p.GetClientSecret(),
		Scopes:           p.GetScopes(),
		AccessTokenLife:  p.GetAccessTokenLifetime().AsDuration(),
		RefreshIdle:      p.GetRefreshTokenIdleTimeout().AsDuration(),
		RefreshMaxLife:   p.GetRefreshTokenMaxLifetime().AsDuration(),
		ReuseGrace:       p.GetReuseGracePeriod().AsDuration(),

		DeviceAuthorizationURL: p.GetDeviceAuthorizationUrl(),
		ClientAuth:             clientAuthFromProto(p.GetClientAuthMethod()),
		PreviousAccessToken:    previousAccessFromProto(p.GetPreviousAccessToken()),
		Issuer:                 p.GetIssuer(),
	}
}

func previousAccessFromProto(m rotavaultv1.PreviousAccessToken) credspec.PreviousAccess {
	switch m {
	case rotavaultv1.PreviousAccessToken_PREVIOUS_ACCESS_TOKEN_REVOKED:
		return credspec.PreviousAccessRevoked
	case rotavaultv1.PreviousAccessToken_PREVIOUS_ACCESS_TOKEN_KEPT:
		return credspec.PreviousAccessKept
	case rotavaultv1.PreviousAccessToken_PREVIOUS_ACCESS_TOKEN_UNSPECIFIED:
		return credspec.PreviousAccessDefault
	default:
		return "unknown" // refused by the broker's validation
	}
}

func previousAccessToProto(m credspec.PreviousAccess) rotavaultv1.PreviousAccessToken {
	switch m {
	case credspec.PreviousAccessRevoked:
		return rotavaultv1.PreviousAccessToken_PREVIOUS_ACCESS_TOKEN_REVOKED
	case credspec.PreviousAccessKept:
		return rotavaultv1.PreviousAccessToken_PREVIOUS_ACCESS_TOKEN_KEPT
	default:
		return rotavaultv1.PreviousAccessToken_PREVIOUS_ACCESS_TOKEN_UNSPECIFIED
	}
}

func clientAuthFromProto(m rotavaultv1.ClientAuthMethod) credspec.ClientAuthMethod {
	switch m {
	case rotavaultv1.ClientAuthMethod_CLIENT_AUTH_METHOD_CLIENT_SECRET_POST:
		return credspec.ClientAuthSecretPost
	case rotavaultv1.ClientAuthMethod_CLIENT_AUTH_METHOD_CLIENT_SECRET_BASIC:
		return credspec.ClientAuthSecretBasic
	case rotavaultv1.ClientAuthMethod_CLIENT_AUTH_METHOD_UNSPECIFIED:
		return credspec.ClientAuthDefault
	default:
		return -1 // refused by the broker's validation
	}
}

func clientAuthToProto(m credspec.ClientAuthMethod) rotavaultv1.ClientAuthMethod {
	switch m {
	case credspec.ClientAuthSecretPost:
		return rotavaultv1.ClientAuthMethod_CLIENT_AUTH_METHOD_CLIENT_SECRET_POST
	case credspec.ClientAuthSecretBasic:
		return rotavaultv1.ClientAuthMethod_CLIENT_AUTH_METHOD_CLIENT_SECRET_BASIC
	default:
		return rotavaultv1.ClientAuthMethod_CLIENT_AUTH_METHOD_UNSPECIFIED
	}
}

func providerKindFromProto(k rotavaultv1.ProviderKind) credspec.ProviderKind {
	switch k {
	case rotavaultv1.ProviderKind_PROVIDER_KIND_SALESFORCE:
		return credspec.ProviderSalesforce
	case rotavaultv1.ProviderKind_PROVIDER_KIND_OAUTH2:
		return credspec.ProviderOAuth2
	default:
		return credspec.ProviderUnspecified
	}
}

func providerKindToProto(k credspec.ProviderKind) rotavaultv1.ProviderKind {
	switch k {
	case credspec.ProviderSalesforce:
		return rotavaultv1.ProviderKind_PROVIDER_KIND_SALESFORCE
	case credspec.ProviderOAuth2:
		return rotavaultv1.ProviderKind_PROVIDER_KIND_OAUTH2
	default:
		return rotavaultv1.ProviderKind_PROVIDER_KIND_UNSPECIFIED
	}
}

// specToProto never sets client_secret.
func specToProto(s credspec.Spec) *rotavaultv1.CredentialSpec {
	return &rotavaultv1.CredentialSpec{
		ProviderKind:            providerKindToProto(s.ProviderKind),
		BaseUrl:                 s.BaseURL,
		TokenUrl:                s.TokenURL,
		AuthorizeUrl:            s.AuthorizeURL,
		RevocationUrl:           s.RevocationURL,
		IntrospectionUrl:        s.IntrospectionURL,
		ClientId:                s.ClientID,
		Scopes:                  s.Scopes,
		AccessTokenLifetime:     durationOrNil(s.AccessTokenLife),
		RefreshTokenIdleTimeout: durationOrNil(s.RefreshIdle),
		RefreshTokenMaxLifetime: durationOrNil(s.RefreshMaxLife),
		ReuseGracePeriod:        durationOrNil(s.ReuseGrace),
		DeviceAuthorizationUrl:  s.DeviceAuthorizationURL,
		ClientAuthMethod:        clientAuthToProto(s.ClientAuth),
		PreviousAccessToken:     previousAccessToProto(s.PreviousAccessToken),
		Issuer:                  s.Issuer,
	}
}

func discoveredToProto(d *credspec.DiscoveredMetadata) *rotavaultv1.DiscoveredMetadata {
	if d == nil {
		return nil
	}
	return &rotavaultv1.DiscoveredMetadata{
		Issuer: d.Issuer, MetadataUrl: d.URL, TokenUrl: d.TokenURL, AuthorizeUrl: d.AuthorizeURL,
		RevocationUrl: d.RevocationURL, IntrospectionUrl: d.IntrospectionURL,
		DeviceAuthorizationUrl:   d.DeviceAuthorizationURL,
		TokenEndpointAuthMethods: d.TokenEndpointAuthMethods,
		ClientAuthMethod:         clientAuthToProto(d.ClientAuth),
		FetchTime:                timestampOrNil(d.FetchedAt),
	}
}

func earlyDetectionToProto(s detect.State, detail string) *rotavaultv1.EarlyDetection {
	var st rotavaultv1.EarlyDetectionState
	switch s {
	case detect.StateActive:
		st = rotavaultv1.EarlyDetectionState_EARLY_DETECTION_STATE_ACTIVE
	case detect.StateDisabled:
		st = rotavaultv1.EarlyDetectionState_EARLY_DETECTION_STATE_DISABLED
	case detect.StateNoEndpoint:
		st = rotavaultv1.EarlyDetectionState_EARLY_DETECTION_STATE_NO_INTROSPECTION_ENDPOINT
	case detect.StateNoFamily:
		st = rotavaultv1.EarlyDetectionState_EARLY_DETECTION_STATE_NO_FAMILY
	case detect.StateWaiting:
		st = rotavaultv1.EarlyDetectionState_EARLY_DETECTION_STATE_WAITING_FOR_ACCESS_TOKEN
	}
	return &rotavaultv1.EarlyDetection{State: st, Detail: detail}
}

func statusToProto(s family.Status) rotavaultv1.CredentialStatus {
	switch s {
	case family.StatusActive:
		return rotavaultv1.CredentialStatus_CREDENTIAL_STATUS_ACTIVE
	case family.StatusRevoked:
		return rotavaultv1.CredentialStatus_CREDENTIAL_STATUS_REVOKED
	case family.StatusAwaitingReauth:
		return rotavaultv1.CredentialStatus_CREDENTIAL_STATUS_AWAITING_REAUTHENTICATION
	case family.StatusUnproven:
		return rotavaultv1.CredentialStatus_CREDENTIAL_STATUS_UNPROVEN
	default:
		return rotavaultv1.CredentialStatus_CREDENTIAL_STATUS_UNSPECIFIED
	}
}

func reasonToProto(r notice.RevocationReason) rotavaultv1.RevocationReason {
	switch r {
	case notice.ReasonRefreshTokenRejected:
		return rotavaultv1.RevocationReason_REVOCATION_REASON_REFRESH_TOKEN_REJECTED
	case notice.ReasonLostRotation:
		return rotavaultv1.RevocationReason_REVOCATION_REASON_LOST_ROTATION
	case notice.ReasonClientRejected:
		return rotavaultv1.RevocationReason_REVOCATION_REASON_CLIENT_REJECTED
	case notice.ReasonAdmin:
		return rotavaultv1.RevocationReason_REVOCATION_REASON_ADMIN
	case notice.ReasonSuperseded:
		return rotavaultv1.RevocationReason_REVOCATION_REASON_SUPERSEDED
	case notice.ReasonAdminRevoked:
		return rotavaultv1.RevocationReason_REVOCATION_REASON_ADMIN_REVOKED
	case notice.ReasonRevokedAtProvider:
		return rotavaultv1.RevocationReason_REVOCATION_REASON_REVOKED_AT_PROVIDER
	default:
		return rotavaultv1.RevocationReason_REVOCATION_REASON_UNSPECIFIED
	}
}

func credentialToProto(c registry.Credential) *rotavaultv1.Credential {
	return &rotavaultv1.Credential{
		CredentialId:          c.ID,
		Spec:                  specToProto(c.Spec),
		HasClientSecret:       c.HasClientSecret,
		Status:                statusToProto(c.Status),
		FamilyId:              c.FamilyID,
		Generation:            c.Generation,
		RevocationReason:      reasonToProto(c.RevokedReason),
		LastRotationTime:      timestampOrNil(c.LastRotationAt),
		NextRefreshTime:       timestampOrNil(c.NextRefreshAt),
		AccessTokenExpireTime: timestampOrNil(c.AccessExpiresAt),
		AccessTokenIssueTime:  timestampOrNil(c.AccessIssuedAt),
		LastRefreshRotation:   rotationToProto(c.LastRefreshRotated),
		LastError:             c.LastError,
		CreateTime:            timestampOrNil(c.CreatedAt),
		UpdateTime:            timestampOrNil(c.UpdatedAt),
		EarlyDetection:        earlyDetectionToProto(c.EarlyDetection, c.EarlyDetectionDetail),
		DiscoveredMetadata:    discoveredToProto(c.Spec.Discovered),
	}
}

func noticeToProto(n notice.Notice) *rotavaultv1.Notice {
	kind := rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_REVOKED
	if n.Kind == notice.FamilyActivated {
		kind = rotavaultv1.NoticeKind_NOTICE_KIND_FAMILY_ACTIVATED
	}
	return &rotavaultv1.Notice{
		CredentialId: n.CredentialID,
		FamilyId:     n.FamilyID,
		Generation:   n.Generation,
		Kind:         kind,
		Reason:       reasonToProto(n.Reason),
		Detail:       n.Detail,
		DetectTime:   timestamppb.New(n.DetectedAt),
		Cursor:       n.Cursor,

		ProviderRevocation: providerRevocationToProto(n.ProviderRevocation),
	}
}

func providerRevocationToProto(p notice.ProviderRevocation) rotavaultv1.ProviderRevocation {
	switch p {
	case notice.ProviderRevocationConfirmed:
		return rotavaultv1.ProviderRevocation_PROVIDER_REVOCATION_CONFIRMED
	case notice.ProviderRevocationUnconfirmed:
		return rotavaultv1.ProviderRevocation_PROVIDER_REVOCATION_UNCONFIRMED
	default:
		return rotavaultv1.ProviderRevocation_PROVIDER_REVOCATION_UNSPECIFIED
	}
}

func authorizationPendingToProto(p *authflow.PendingAuthorization) *rotavaultv1.ReauthenticateResponse {
	return &rotavaultv1.ReauthenticateResponse{Result: &rotavaultv1.ReauthenticateResponse_AuthorizationPending{
		AuthorizationPending: &rotavaultv1.AuthorizationPending{
			AuthorizeUrl: p.AuthorizeURL, State: p.State, ExpireTime: timestamppb.New(p.ExpiresAt), RedirectUri: p.RedirectURI,
		},
	}}
}

// devicePendingToProto carries the user code, for the operator; the device
// code never leaves the store.
func devicePendingToProto(p *authflow.DevicePending) *rotavaultv1.ReauthenticateResponse {
	return &rotavaultv1.ReauthenticateResponse{Result: &rotavaultv1.ReauthenticateResponse_DeviceAuthorizationPending{
		DeviceAuthorizationPending: &rotavaultv1.DeviceAuthorizationPending{
			State: p.State, UserCode: p.UserCode,
			VerificationUri: p.VerificationURI, VerificationUriComplete: p.VerificationURIComplete,
			ExpireTime: timestamppb.New(p.ExpiresAt), Interval: durationpb.New(p.Interval),
		},
	}}
}

func rotationToProto(rotated *bool) rotavaultv1.RefreshRotation {
	switch {
	case rotated == nil:
		return rotavaultv1.RefreshRotation_REFRESH_ROTATION_UNSPECIFIED
	case *rotated:
		return rotavaultv1.RefreshRotation_REFRESH_ROTATION_ROTATED
	default:
		return rotavaultv1.RefreshRotation_REFRESH_ROTATION_NOT_ROTATED
	}
}
