package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/rotavault/rotavault/audit"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// serveOperations runs a real gRPC server with ops and returns an admin
// client (no policy: every caller is the admin).
func serveOperations(t *testing.T, ops Operations) rotavaultv1.CredentialAdminServiceClient {
	t.Helper()
	return rotavaultv1.NewCredentialAdminServiceClient(serveLoopback(t, Config{Operations: ops}))
}

// serveLoopback serves New(cfg) on a loopback port until the test ends and
// returns a client connection to it.
func serveLoopback(t *testing.T, cfg Config) *grpc.ClientConn {
	t.Helper()
	srv := New(cfg)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.GRPC.Serve(lis)
	}()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-served
	})
	return conn
}

// receiveBackup reads a whole backup stream.
func receiveBackup(stream grpc.ServerStreamingClient[rotavaultv1.BackupStoreResponse]) (total int64, got []byte, err error) {
	for first := true; ; first = false {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return total, got, nil
		}
		if err != nil {
			return total, got, err
		}
		if first {
			total = msg.GetTotalSize()
		}
		if len(msg.GetChunk()) > backupChunkSize {
			return total, got, errors.New("a chunk larger than backupChunkSize")
		}
		got = append(got, msg.GetChunk()...)
	}
}

func TestOnlyOneBackupStreamsAtATime(t *testing.T) {
	content := bytes.Repeat([]byte("sealed store page "), 20000) // 360 KB: several chunks
	half := len(content) / 2
	halfSent := make(chan struct{}, 1)
	release := make(chan struct{})
	hold := true
	admin := serveOperations(t, Operations{StoreBackend: "embedded", StoreKeyID: "k1",
		Snapshot: func(ctx context.Context, start func(int64) (io.Writer, error)) error {
			w, err := start(int64(len(content)))
			if err != nil {
				return err
			}
			if _, err := w.Write(content[:half]); err != nil {
				return err
			}
			if hold {
				hold = false // only the first backup waits (the bound keeps this race-free)
				halfSent <- struct{}{}
				select {
				case <-release:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			_, err = w.Write(content[half:])
			return err
		}})
	ctx := testCtx(t)

	first, err := admin.BackupStore(ctx, &rotavaultv1.BackupStoreRequest{})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := first.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if msg.GetTotalSize() != int64(len(content)) || msg.GetStoreKeyId() != "k1" {
		t.Fatalf("first message announces size %d key %q, want %d k1", msg.GetTotalSize(), msg.GetStoreKeyId(), len(content))
	}
	<-halfSent

	second, err := admin.BackupStore(ctx, &rotavaultv1.BackupStoreRequest{})
	if err == nil {
		_, _, err = receiveBackup(second)
	}
	if status.Code(err) != codes.ResourceExhausted || errorReason(err) != ReasonBackupInProgress {
		t.Fatalf("a second backup while one streams: %v, want RESOURCE_EXHAUSTED %s", err, ReasonBackupInProgress)
	}

	close(release)
	_, rest, err := receiveBackup(first)
	if err != nil {
		t.Fatal(err)
	}
	if got := append(msg.GetChunk(), rest...); !bytes.Equal(got, content) {
		t.Fatalf("the first backup delivered %d bytes, not the snapshot's %d", len(got), len(content))
	}

	// The slot is free again once a backup ends.
	third, err := admin.BackupStore(ctx, &rotavaultv1.BackupStoreRequest{})
	if err != nil {
		t.Fatal(err)
	}
	total, got, err := receiveBackup(third)
	if err != nil || total != int64(len(content)) || !bytes.Equal(got, content) {
		t.Fatalf("a backup after the first ended: %d of %d bytes, %v", len(got), total, err)
	}
}

func TestBackupOnVaultPointsAtVaultSnapshots(t *testing.T) {
	admin := serveOperations(t, Operations{StoreBackend: "vault"})
	stream, err := admin.BackupStore(testCtx(t), &rotavaultv1.BackupStoreRequest{})
	if err == nil {
		_, _, err = receiveBackup(stream)
	}
	if status.Code(err) != codes.FailedPrecondition || errorReason(err) != ReasonBackupNotSupported ||
		!strings.Contains(status.Convert(err).Message(), "vault operator raft snapshot save") {
		t.Fatalf("backup on Vault: %v, want FAILED_PRECONDITION %s naming Vault's snapshots", err, ReasonBackupNotSupported)
	}
}

func TestOnlyOneAuditVerificationRunsAtATime(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseFirst := func() { releaseOnce.Do(func() { close(release) }) }
	admin := serveOperations(t, Operations{StoreBackend: "embedded",
		VerifyAudit: func(ctx context.Context) (audit.Report, error) {
			select {
			case started <- struct{}{}:
				<-release
			default: // not the first: answer at once
			}
			return audit.Report{Records: 3, Anchor: &audit.Head{Seq: 3}}, nil
		}})
	ctx := testCtx(t)
	first := make(chan error, 1)
	go func() {
		_, err := admin.VerifyAuditTrail(ctx, &rotavaultv1.VerifyAuditTrailRequest{})
		first <- err
	}()
	<-started
	t.Cleanup(releaseFirst) // registered after the server's: runs before its shutdown
	_, err := admin.VerifyAuditTrail(ctx, &rotavaultv1.VerifyAuditTrailRequest{})
	if status.Code(err) != codes.ResourceExhausted || errorReason(err) != ReasonVerificationInProgress {
		t.Fatalf("a second verification while one runs: %v, want RESOURCE_EXHAUSTED %s", err, ReasonVerificationInProgress)
	}
	releaseFirst()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	resp, err := admin.VerifyAuditTrail(ctx, &rotavaultv1.VerifyAuditTrailRequest{})
	if err != nil || !resp.GetIntact() || resp.GetRecords() != 3 || resp.GetAnchoredSeq() != 3 {
		t.Fatalf("a verification after the first ended: %v, %v", resp, err)
	}
}
