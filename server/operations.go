package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/family"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/version"
)

// Reasons of the operations RPCs.
const (
	// The store backend has no online backup (Vault: use its snapshots).
	ReasonBackupNotSupported = "BACKUP_NOT_SUPPORTED"
	// Another backup is being streamed; retry when it is done.
	ReasonBackupInProgress = "BACKUP_IN_PROGRESS"
	// Another audit verification runs; retry when it is done.
	ReasonVerificationInProgress = "VERIFICATION_IN_PROGRESS"
	// The server keeps no audit trail to verify.
	ReasonNoAuditTrail = "NO_AUDIT_TRAIL"
)

// backupChunkSize is the most a BackupStoreResponse carries, well under
// the default 4 MiB message limit of every gRPC client.
const backupChunkSize = 64 << 10

// Operations is what the admin service's operations RPCs (BackupStore,
// VerifyAuditTrail, GetServerStatus) need of the server around them. A nil
// func turns its RPC off with FAILED_PRECONDITION.
type Operations struct {
	// StoreBackend names the store ("embedded", "vault").
	StoreBackend string
	// Snapshot writes a consistent copy of the store to the writer start
	// returns, after telling start its size (boltstore.Store.Snapshot);
	// nil for a backend without one.
	Snapshot func(ctx context.Context, start func(size int64) (io.Writer, error)) error
	// StoreKeyID is the id of the key the copy is sealed under.
	StoreKeyID string
	// VerifyAudit checks the audit trail online
	// (audit.FileLog.VerifyOnline); nil without a trail.
	VerifyAudit func(ctx context.Context) (audit.Report, error)
	// AuditWitness says whether VerifyAudit checks a witness.
	AuditWitness bool
}

// operations serves the operations RPCs. Safe for concurrent use.
type operations struct {
	cfg     Operations
	ready   Readiness
	creds   Credentials
	started time.Time
	// backingUp bounds BackupStore to one stream at a time: each spools a
	// full copy of the store beside it before streaming it.
	backingUp atomic.Bool
	// verifying bounds VerifyAuditTrail to one at a time: each reads the
	// whole trail, and holds back anchoring while it reads the witness.
	verifying atomic.Bool
}

// BackupStore implements rotavault.v1.CredentialAdminService.
func (s *CredentialAdminService) BackupStore(_ *rotavaultv1.BackupStoreRequest, stream grpc.ServerStreamingServer[rotavaultv1.BackupStoreResponse]) error {
	ops := s.ops
	if ops.cfg.Snapshot == nil {
		return withDetails(status.Newf(codes.FailedPrecondition,
			"the %s store has no online backup here: back it up with its own tools (Vault: `vault operator raft snapshot save`, or your storage backend's snapshots)", ops.cfg.StoreBackend),
			&errdetails.ErrorInfo{Reason: ReasonBackupNotSupported, Domain: ErrorDomain})
	}
	if !ops.backingUp.CompareAndSwap(false, true) {
		return withDetails(status.New(codes.ResourceExhausted, "another backup is in progress on this server; retry when it is done"),
			&errdetails.ErrorInfo{Reason: ReasonBackupInProgress, Domain: ErrorDomain})
	}
	defer ops.backingUp.Store(false)
	ctx := stream.Context()
	cw := &chunkSender{stream: stream, keyID: ops.cfg.StoreKeyID}
	var bw *bufio.Writer
	err := ops.cfg.Snapshot(ctx, func(size int64) (io.Writer, error) {
		cw.size = size
		bw = bufio.NewWriterSize(cw, backupChunkSize)
		return bw, nil
	})
	if err == nil && bw != nil {
		err = bw.Flush()
	}
	if err == nil && !cw.sentFirst {
		err = cw.send(nil) // an empty store still announces its size
	}
	if err != nil {
		if ctx.Err() != nil {
			return status.FromContextError(ctx.Err()).Err()
		}
		s.log.ErrorContext(ctx, "store backup failed", "err", err)
		return status.Error(codes.Internal, "the backup failed; see the server log")
	}
	s.log.InfoContext(ctx, "store backup streamed", "bytes", cw.size, "store_key_id", ops.cfg.StoreKeyID)
	return nil
}

// chunkSender turns a byte stream into BackupStoreResponse messages of at
// most backupChunkSize bytes; the first carries the size and key id.
type chunkSender struct {
	stream    grpc.ServerStreamingServer[rotavaultv1.BackupStoreResponse]
	size      int64
	keyID     string
	sentFirst bool
}

func (c *chunkSender) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), backupChunkSize)
		if err := c.send(p[:k]); err != nil {
			return n, err
		}
		n += k
		p = p[k:]
	}
	return n, nil
}

func (c *chunkSender) send(chunk []byte) error {
	msg := &rotavaultv1.BackupStoreResponse{Chunk: chunk}
	if !c.sentFirst {
		msg.TotalSize, msg.StoreKeyId = c.size, c.keyID
		c.sentFirst = true
	}
	if err := c.stream.Send(msg); err != nil {
		return fmt.Errorf("send backup chunk: %w", err)
	}
	return nil
}

// VerifyAuditTrail implements rotavault.v1.CredentialAdminService.
func (s *CredentialAdminService) VerifyAuditTrail(ctx context.Context, _ *rotavaultv1.VerifyAuditTrailRequest) (*rotavaultv1.VerifyAuditTrailResponse, error) {
	if s.ops.cfg.VerifyAudit == nil {
		return nil, withDetails(status.New(codes.FailedPrecondition, "this server keeps no audit trail"),
			&errdetails.ErrorInfo{Reason: ReasonNoAuditTrail, Domain: ErrorDomain})
	}
	if !s.ops.verifying.CompareAndSwap(false, true) {
		return nil, withDetails(status.New(codes.ResourceExhausted, "another audit verification is running on this server; retry when it is done"),
			&errdetails.ErrorInfo{Reason: ReasonVerificationInProgress, Domain: ErrorDomain})
	}
	defer s.ops.verifying.Store(false)
	rep, err := s.ops.cfg.VerifyAudit(ctx)
	resp := &rotavaultv1.VerifyAuditTrailResponse{Intact: err == nil, Records: rep.Records, WitnessChecked: s.ops.cfg.AuditWitness,
		BeyondAnchorRecords: rep.BeyondAnchor}
	if rep.Anchor != nil {
		resp.Anchored, resp.AnchoredSeq = true, rep.Anchor.Seq
	}
	if rep.Witnessed != nil {
		resp.WitnessedSeq = rep.Witnessed.Seq
	}
	var ce *audit.ChainError
	switch {
	case err == nil:
	case errors.As(err, &ce):
		// The chain's own words: line, seq and what is wrong, never a
		// record's content.
		resp.Problem = ce.Error()
		s.log.WarnContext(ctx, "online audit verification found a broken chain", "problem", ce.Problem, "line", ce.Line, "seq", ce.Seq)
	default:
		return nil, toStatus(ctx, s.log, err)
	}
	return resp, nil
}

// GetServerStatus implements rotavault.v1.CredentialAdminService.
func (s *CredentialAdminService) GetServerStatus(ctx context.Context, _ *rotavaultv1.GetServerStatusRequest) (*rotavaultv1.GetServerStatusResponse, error) {
	resp := &rotavaultv1.GetServerStatusResponse{StoreBackend: s.ops.cfg.StoreBackend, Ready: true, StartTime: timestamppb.New(s.ops.started)}
	// The same build information as `rotavault version` and
	// rotavault_build_info: an ldflags-stamped release version wins.
	bi := version.Get()
	resp.Version, resp.VcsRevision, resp.VcsModified, resp.GoVersion = bi.Version, bi.Revision, bi.Modified, bi.GoVersion
	if s.ops.ready == nil {
		return resp, nil
	}
	if err := s.ops.ready.Ready(); err != nil {
		resp.Ready, resp.NotReadyReason = false, err.Error()
	}
	counts, err := s.ops.creds.Count(ctx)
	if err != nil {
		// The status answers even when the store does not: that is when
		// an operator asks.
		s.log.WarnContext(ctx, "status: credentials not counted", "err", err)
		resp.Ready = false
		if resp.NotReadyReason == "" {
			resp.NotReadyReason = "the credential store is unavailable"
		}
		return resp, nil
	}
	for _, st := range []family.Status{family.StatusActive, family.StatusRevoked, family.StatusAwaitingReauth, family.StatusUnproven} {
		resp.CredentialCounts = append(resp.CredentialCounts, &rotavaultv1.CredentialStatusCount{Status: statusToProto(st), Count: uint64(counts[st])})
	}
	return resp, nil
}
