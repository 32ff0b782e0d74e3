package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/internal/fsutil"
)

// onlineBackupTimeout is --timeout's default for an online backup: the
// whole copy travels within it, and a store of many credentials takes
// longer than one answer.
const onlineBackupTimeout = 10 * time.Minute

// onlineFlag is the flag of store backup and audit verify that asks the
// running server instead of opening the store.
const onlineFlag = "online"

// onlineBackup streams the server's snapshot into a temporary file next
// to out and links it into place only once it is complete: out never
// exists half-written, and an existing out is never replaced. It returns
// the copy's size and the id of the key it is sealed under.
func onlineBackup(ctx context.Context, client *clientOptions, out string) (size int64, keyID string, err error) {
	if _, err := os.Lstat(out); err == nil {
		return 0, "", usageErrorf("--out %s exists; choose a new file", out)
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".partial-*")
	if err != nil {
		return 0, "", fmt.Errorf("create backup: %w", err)
	}
	// CreateTemp's mode is 0600 already; say so where it matters.
	defer func() {
		_ = tmp.Close()
		_ = os.Remove(tmp.Name())
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return 0, "", fmt.Errorf("create backup: %w", err)
	}
	var written int64
	err = client.call(ctx, func(ctx context.Context, conn *grpc.ClientConn) error {
		stream, err := rotavaultv1.NewCredentialAdminServiceClient(conn).BackupStore(ctx, &rotavaultv1.BackupStoreRequest{})
		if err != nil {
			return err
		}
		first := true
		for {
			msg, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if first {
				size, keyID, first = msg.GetTotalSize(), msg.GetStoreKeyId(), false
			}
			n, err := tmp.Write(msg.GetChunk())
			written += int64(n)
			if err != nil {
				return fmt.Errorf("write backup: %w", err)
			}
		}
	})
	if err != nil {
		return 0, "", client.explain(err, "")
	}
	if written != size {
		return 0, "", fmt.Errorf("backup incomplete: the server announced %d bytes and sent %d; nothing was written to %s", size, written, out)
	}
	if err := tmp.Sync(); err != nil {
		return 0, "", fmt.Errorf("write backup: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return 0, "", fmt.Errorf("write backup: %w", err)
	}
	// A link, not a rename: it fails rather than replace a file that
	// appeared meanwhile.
	if err := os.Link(tmp.Name(), out); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return 0, "", usageErrorf("--out %s exists; choose a new file", out)
		}
		return 0, "", fmt.Errorf("write backup: %w", err)
	}
	if err := fsutil.SyncDir(filepath.Dir(out)); err != nil {
		return 0, "", fmt.Errorf("write backup: %w", err)
	}
	return size, keyID, nil
}

// onlineVerify asks the server to verify its audit trail and prints the
// outcome; a broken chain is an error (exit 1).
func onlineVerify(ctx context.Context, a *app, client *clientOptions) error {
	resp, err := adminCall(ctx, client, "", func(ctx context.Context, c rotavaultv1.CredentialAdminServiceClient) (*rotavaultv1.VerifyAuditTrailResponse, error) {
		return c.VerifyAuditTrail(ctx, &rotavaultv1.VerifyAuditTrailRequest{})
	})
	if err != nil {
		return err
	}
	if client.json {
		if err := printJSON(a.stdout, resp); err != nil {
			return err
		}
	}
	if !resp.GetIntact() {
		return errors.New(terminalSafe(resp.GetProblem()))
	}
	if client.json {
		return nil
	}
	anchor := "; no head anchored in the store"
	switch {
	case resp.GetAnchored() && resp.GetBeyondAnchorRecords() == 0:
		anchor = fmt.Sprintf(", ends at the anchored head (seq %d)", resp.GetAnchoredSeq())
	case resp.GetAnchored():
		anchor = fmt.Sprintf("; the anchored head is seq %d and %d records lie beyond it (not anchored yet)", resp.GetAnchoredSeq(), resp.GetBeyondAnchorRecords())
	}
	witness := " (the server has no --audit-witness: a store rolled back together with the file would not be detected)"
	switch {
	case resp.GetWitnessChecked() && resp.GetWitnessedSeq() == 0:
		witness = "; the witness holds no line of this store"
	case resp.GetWitnessChecked():
		witness = fmt.Sprintf("; the store is not older than its witness (seq %d)", resp.GetWitnessedSeq())
	}
	_, err = fmt.Fprintf(a.stdout, "OK: the server's audit trail: %d records, chain intact%s%s\n", resp.GetRecords(), anchor, witness)
	return err
}
