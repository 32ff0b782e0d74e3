package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/store"
)

// auditHeadKey is the store record anchoring this data directory's trail.
// The embedded store belongs to one data directory, so the default
// suffices. Vault replicas share one store but each writes its own file:
// each anchors under a key derived from its host name and data directory,
// so one replica's head never collides with another's.
func auditHeadKey(backend, dataDir string) (string, error) {
	if backend != backendVault {
		return audit.DefaultHeadKey, nil
	}
	host, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("audit head key: %w", err)
	}
	dir, err := filepath.Abs(dataDir)
	if err != nil {
		return "", fmt.Errorf("audit head key: %w", err)
	}
	sum := sha256.Sum256([]byte(host + "\x00" + dir))
	return "audit/heads/" + hex.EncodeToString(sum[:8]), nil
}

// openAudit opens DATA_DIR/audit.jsonl, continuing the chain anchored in
// st, and explains a broken chain.
func openAudit(ctx context.Context, backend, dataDir string, st store.Store, anchorInterval time.Duration, log *slog.Logger) (*audit.FileLog, error) {
	headKey, err := auditHeadKey(backend, dataDir)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dataDir, auditFileName)
	al, err := audit.Open(ctx, audit.Config{Path: path, Store: st, HeadKey: headKey, Logger: log, AnchorInterval: anchorInterval})
	if errors.Is(err, audit.ErrChainBroken) {
		return nil, withHint(err, "the server does not start a new audit chain over a broken or missing one: "+
			"inspect %s (`rotavault audit verify` with the server stopped). A trail written before the chain existed can be moved aside; "+
			"starting a new chain segment after tampering is not supported yet", path)
	}
	return al, err
}

func newAuditCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Check the audit trail offline",
		Long: `Check the audit trail (DATA_DIR/audit.jsonl) while no server uses the store.
A running server holds the store's lock: stop it first.`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRunE,
	}
	cmd.AddCommand(newAuditVerifyCmd(a))
	return cmd
}

func newAuditVerifyCmd(a *app) *cobra.Command {
	var st offlineStore
	cmd := &cobra.Command{
		Use:   "verify --data-dir DIR --store-key-file KEY",
		Short: "Verify the audit trail's hash chain and its anchored head",
		Long: `Verify DATA_DIR/audit.jsonl: every record's HMAC-SHA256 under the audit key,
its seq (1, 2, 3… with no gap), that it names the previous record's mac, and
that the file reaches the head anchored in the store. The audit key and the
head live in the embedded store, so this needs the store key, and the server
must be stopped (it holds the store's lock).

Prints OK with the record count, or exits 1 naming the first broken record
(line and seq) and what is wrong: bad mac (altered, or written without the
key), seq gap (records deleted or reordered), prev mismatch (spliced),
truncated below anchor (records cut off the end), audit file missing, not
valid JSON. Records beyond the anchored head (written while the store was
unreachable) are accepted when they chain, and counted.

Only the embedded store is supported for now.

Examples:
  rotavault audit verify --data-dir /var/lib/rotavault --store-key-file /etc/rotavault/store.key`,
		Args: args(cobra.NoArgs),
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			bs, _, err := st.open(a)
			if err != nil {
				return err
			}
			defer bs.Close()
			path := filepath.Join(st.dataDir, auditFileName)
			rep, err := audit.Verify(cmd.Context(), audit.Config{Path: path, Store: bs, HeadKey: audit.DefaultHeadKey})
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(a.stdout, "OK: %s: %d records, chain intact%s\n", path, rep.Records, describeAnchor(rep))
			return err
		}),
	}
	st.register(cmd.Flags())
	return cmd
}

func describeAnchor(rep audit.Report) string {
	switch {
	case rep.Anchor == nil:
		return "; no head anchored in the store (nothing was written yet?)"
	case rep.BeyondAnchor == 0:
		return fmt.Sprintf(", ends at the anchored head (seq %d)", rep.Anchor.Seq)
	default:
		return fmt.Sprintf("; the anchored head is seq %d and %d records lie beyond it (written while the store was unreachable: they chain, but their removal would not be detected)",
			rep.Anchor.Seq, rep.BeyondAnchor)
	}
}
