package server

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/catalog"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/registry"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// Credentials is what the admin service needs of the credential registry;
// *registry.Credentials (broker.Broker.Credentials) is one.
type Credentials interface {
	Create(ctx context.Context, id string, spec credspec.Spec) (registry.Credential, error)
	Update(ctx context.Context, id string, fields []credspec.Field, spec credspec.Spec) (registry.Credential, error)
	Get(ctx context.Context, id string) (registry.Credential, error)
	List(ctx context.Context, after string, limit int) ([]registry.Credential, bool, error)
	Delete(ctx context.Context, id string) error
	Count(ctx context.Context) (map[family.Status]int, error)
}

// CredentialAdminConfig holds the admin service's dependencies.
type CredentialAdminConfig struct {
	Credentials Credentials
	// Catalog serves ListConsumers.
	Catalog ConsumerCatalog
	Logger  *slog.Logger // nil: discard
	// Operations serves BackupStore, VerifyAuditTrail and
	// GetServerStatus; the zero value turns the first two off.
	Operations Operations
	// Ready says whether the rotation logic can serve, for
	// GetServerStatus (nil: neither readiness nor counts are reported).
	Ready Readiness
}

// CredentialAdminService implements rotavault.v1.CredentialAdminService.
// Safe for concurrent use.
type CredentialAdminService struct {
	rotavaultv1.UnimplementedCredentialAdminServiceServer
	creds   Credentials
	catalog ConsumerCatalog
	log     *slog.Logger
	ops     *operations
}

// NewCredentialAdminService returns the admin service.
func NewCredentialAdminService(cfg CredentialAdminConfig) *CredentialAdminService {
	return &CredentialAdminService{creds: cfg.Credentials, catalog: cfg.Catalog, log: loggerOrDiscard(cfg.Logger),
		ops: &operations{cfg: cfg.Operations, ready: cfg.Ready, creds: cfg.Credentials, started: time.Now()}}
}

const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

// CreateCredential implements rotavault.v1.CredentialAdminService.
func (s *CredentialAdminService) CreateCredential(ctx context.Context, req *rotavaultv1.CreateCredentialRequest) (*rotavaultv1.CreateCredentialResponse, error) {
	c, err := s.creds.Create(ctx, req.GetCredentialId(), specFromProto(req.GetSpec()))
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	return &rotavaultv1.CreateCredentialResponse{Credential: credentialToProto(c)}, nil
}

// UpdateCredential implements rotavault.v1.CredentialAdminService.
func (s *CredentialAdminService) UpdateCredential(ctx context.Context, req *rotavaultv1.UpdateCredentialRequest) (*rotavaultv1.UpdateCredentialResponse, error) {
	paths := req.GetUpdateMask().GetPaths()
	fields := make([]credspec.Field, len(paths))
	for i, p := range paths {
		fields[i] = credspec.Field(p)
	}
	spec := specFromProto(req.GetSpec())
	c, err := s.creds.Update(ctx, req.GetCredentialId(), fields, spec)
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	return &rotavaultv1.UpdateCredentialResponse{Credential: credentialToProto(c)}, nil
}

// GetCredential implements rotavault.v1.CredentialAdminService.
func (s *CredentialAdminService) GetCredential(ctx context.Context, req *rotavaultv1.GetCredentialRequest) (*rotavaultv1.GetCredentialResponse, error) {
	c, err := s.creds.Get(ctx, req.GetCredentialId())
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	return &rotavaultv1.GetCredentialResponse{Credential: credentialToProto(c)}, nil
}

// ListCredentials implements rotavault.v1.CredentialAdminService.
func (s *CredentialAdminService) ListCredentials(ctx context.Context, req *rotavaultv1.ListCredentialsRequest) (*rotavaultv1.ListCredentialsResponse, error) {
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	after := ""
	if tok := req.GetPageToken(); tok != "" {
		// A token is the last id of a page: anything else was not ours.
		raw, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil || credspec.ValidateID(string(raw)) != nil {
			return nil, toStatus(ctx, s.log, &brokererr.InvalidArgumentError{Field: "page_token", Reason: "malformed"})
		}
		after = string(raw)
	}
	creds, more, err := s.creds.List(ctx, after, size)
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	resp := &rotavaultv1.ListCredentialsResponse{}
	for _, c := range creds {
		resp.Credentials = append(resp.Credentials, credentialToProto(c))
	}
	if more && len(creds) > 0 {
		resp.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(creds[len(creds)-1].ID))
	}
	return resp, nil
}

// DeleteCredential implements rotavault.v1.CredentialAdminService.
func (s *CredentialAdminService) DeleteCredential(ctx context.Context, req *rotavaultv1.DeleteCredentialRequest) (*rotavaultv1.DeleteCredentialResponse, error) {
	if err := s.creds.Delete(ctx, req.GetCredentialId()); err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	return &rotavaultv1.DeleteCredentialResponse{}, nil
}

// ListConsumers implements rotavault.v1.CredentialAdminService.
func (s *CredentialAdminService) ListConsumers(ctx context.Context, req *rotavaultv1.ListConsumersRequest) (*rotavaultv1.ListConsumersResponse, error) {
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	after, err := decodeConsumerPageToken(req.GetPageToken())
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	consumers, more, err := s.catalog.List(ctx, req.GetCredentialId(), after, size)
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	resp := &rotavaultv1.ListConsumersResponse{Consumers: make([]*rotavaultv1.Consumer, 0, len(consumers))}
	for _, c := range consumers {
		resp.Consumers = append(resp.Consumers, &rotavaultv1.Consumer{
			CredentialId:  c.CredentialID,
			Identity:      c.Identity,
			FirstSeenTime: timestamppb.New(c.FirstSeen),
			LastSeenTime:  timestamppb.New(c.LastSeen),
			TokenCount:    c.Count,
		})
	}
	if more && len(consumers) > 0 {
		last := consumers[len(consumers)-1]
		resp.NextPageToken = encodeConsumerPageToken(catalog.Cursor{CredentialID: last.CredentialID, Identity: last.Identity})
	}
	return resp, nil
}

// pageSize applies the API's paging rule: 0 means defaultPageSize, at most
// maxPageSize.
func pageSize(n int32) (int, error) {
	switch {
	case n < 0 || n > maxPageSize:
		return 0, &brokererr.InvalidArgumentError{Field: "page_size", Reason: "between 0 and 1000"}
	case n == 0:
		return defaultPageSize, nil
	}
	return int(n), nil
}

// consumerPageToken is where a ListConsumers page ends. Clients treat the
// token as opaque; the broker checks that it belongs to the listing.
type consumerPageToken struct {
	CredentialID string `json:"c"`
	Identity     string `json:"i"`
}

// maxConsumerPageToken bounds a page token's length before decoding. It
// fits the longest identity a caller can have — a 2,048-byte SPIFFE ID
// whose every byte JSON escapes to six, then base64 — and stays well below
// MaxRecvMsgSize.
const maxConsumerPageToken = 32 << 10

func encodeConsumerPageToken(c catalog.Cursor) string {
	raw, _ := json.Marshal(consumerPageToken{CredentialID: c.CredentialID, Identity: c.Identity}) // strings only: cannot fail
	return base64.RawURLEncoding.EncodeToString(raw)
}

func decodeConsumerPageToken(tok string) (catalog.Cursor, error) {
	if tok == "" {
		return catalog.Cursor{}, nil
	}
	malformed := &brokererr.InvalidArgumentError{Field: "page_token", Reason: "malformed; pass the next_page_token of the previous page unchanged"}
	if len(tok) > maxConsumerPageToken {
		return catalog.Cursor{}, malformed
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return catalog.Cursor{}, malformed
	}
	var p consumerPageToken
	if err := json.Unmarshal(raw, &p); err != nil || p.CredentialID == "" || p.Identity == "" {
		return catalog.Cursor{}, malformed
	}
	return catalog.Cursor{CredentialID: p.CredentialID, Identity: p.Identity}, nil
}
