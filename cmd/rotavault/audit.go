package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

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

// auditConfig describes DATA_DIR/audit.jsonl, continuing the chain
// anchored in st.
func auditConfig(cfg serverConfig, st store.Store, log *slog.Logger) (audit.Config, error) {
	headKey, err := auditHeadKey(cfg.Backend, cfg.DataDir)
	if err != nil {
		return audit.Config{}, err
	}
	acfg := audit.Config{Path: filepath.Join(cfg.DataDir, auditFileName), Store: st, HeadKey: headKey, Logger: log, AnchorInterval: cfg.AuditAnchorInterval,
		AcceptMissingAnchor: cfg.AcceptMissingAuditAnchor}
	if cfg.AuditWitness != "" {
		acfg.Witness = witnessFile(cfg.AuditWitness)
	}
	return acfg, nil
}

// explainAuditOpen tells the operator what to do when the trail at path
// refuses to open.
func explainAuditOpen(err error, path string) error {
	var ce *audit.ChainError
	if errors.As(err, &ce) && ce.Problem == audit.ProblemNoAnchor {
		return withHint(err, "the store's audit head is written with its audit key, so only its deletion removes it: records cut off the end of %s "+
			"since then would go unnoticed. Check against the witness if you keep one (`rotavault audit verify --witness`); "+
			"to continue anyway, start once with --%s (recorded in the trail)", path, acceptMissingAnchorFlag)
	}
	if errors.Is(err, audit.ErrChainBroken) {
		return withHint(err, "the server does not start a new audit chain over a broken or missing one: "+
			"inspect %s (`rotavault audit verify` with the server stopped). A trail written before the chain existed can be moved aside; "+
			"starting a new chain segment after tampering is not supported yet", path)
	}
	return err
}

// onlineAuditCheck is the running server's audit verification: the trail
// it writes, and the witness file it writes to when it has one.
func onlineAuditCheck(al *audit.FileLog, witness string) func(context.Context) (audit.Report, error) {
	return func(ctx context.Context) (audit.Report, error) {
		if witness == "" {
			return al.VerifyOnline(ctx, nil)
		}
		f, err := os.Open(witness)
		if errors.Is(err, fs.ErrNotExist) {
			// Rotated away and not yet written again: no lines, which
			// the answer reports ("the witness holds no line").
			return al.VerifyOnline(ctx, strings.NewReader(""))
		}
		if err != nil {
			return audit.Report{}, fmt.Errorf("witness: %w", err)
		}
		defer f.Close()
		return al.VerifyOnline(ctx, f)
	}
}

// acceptMissingAnchorFlag is serve's flag accepting a deleted audit head.
const acceptMissingAnchorFlag = "accept-missing-audit-anchor"

// witnessFile appends each line to the file at its path, opened afresh
// every time (an anchor is written at most once per anchor interval), so
// that a rotated or remounted witness file is picked up without a restart;
// regular files are synced.
type witnessFile string

func (w witnessFile) Write(p []byte) (int, error) {
	f, err := os.OpenFile(string(w), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return 0, err
	}
	n, err := f.Write(p)
	if fi, serr := f.Stat(); err == nil && serr == nil && fi.Mode().IsRegular() {
		err = f.Sync()
	}
	return n, errors.Join(err, f.Close())
}

func newAuditCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Check the audit trail, offline or through the running server",
		Long: `Check the audit trail (DATA_DIR/audit.jsonl): offline while no server uses the
store (a running server holds the store's lock), or with audit verify
--online through the running server.`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRunE,
	}
	cmd.AddCommand(newAuditVerifyCmd(a))
	return cmd
}

func newAuditVerifyCmd(a *app) *cobra.Command {
	var st offlineStore
	var witnesses []string
	var client clientOptions
	var online bool
	cmd := &cobra.Command{
		Use:   "verify (--data-dir DIR --store-key-file KEY | --online)",
		Short: "Verify the audit trail's hash chain and its anchored head",
		Long: `Verify DATA_DIR/audit.jsonl: every record's HMAC-SHA256 under the audit key,
its seq (1, 2, 3… with no gap), that it names the previous record's mac, and
that the file reaches the head anchored in the store. The audit key and the
head live in the embedded store, so this needs the store key, and the server
must be stopped (it holds the store's lock).

Prints OK with the record count, or exits 1 naming the first broken record
(line and seq) and what is wrong: bad mac (altered, or written without the
key), seq gap (records deleted or reordered), prev mismatch (spliced),
truncated below anchor (records cut off the end), audit file missing, no
anchored head (the store's head record deleted: it is written with the audit
key), not valid JSON. Records beyond the anchored head (written while the
store was unreachable) are accepted when they chain, and counted.

The anchored head lives in the store, so a store copied back from a backup
brings back an older head, and a file cut to match it verifies. With
--witness (the lines serve --audit-witness wrote, kept where the store's
writer cannot rewrite them; repeat it for rotated files) the store's head
must be at least as new as the newest witnessed one, and the file must reach
it: else "store older than its witness".

Offline, only the embedded store is supported. With --online the running
server verifies the trail it writes (either backend), against the head its
store anchors and, when it runs with --audit-witness, its witness file; this
needs the admin role and the client flags, not the data directory or the
key. Records written while it reads are left for the next check. --witness
is offline only: online, the server reads its own witness file.

Examples:
  rotavault audit verify --data-dir /var/lib/rotavault --store-key-file /etc/rotavault/store.key
  rotavault audit verify --data-dir /var/lib/rotavault --store-key-file /etc/rotavault/store.key \
      --witness /mnt/witness/rotavault-audit-witness.log
  rotavault audit verify --online --server rotavault.internal:8443 --tls-ca ca.pem \
      --tls-cert admin.pem --tls-key admin-key.pem`,
		Args: args(cobra.NoArgs),
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			if online {
				if len(witnesses) > 0 {
					return usageErrorf("--witness is for the offline check: online, the server reads the witness file it writes (serve --audit-witness)")
				}
				return onlineVerify(cmd.Context(), a, &client)
			}
			bs, _, err := st.open(a)
			if err != nil {
				return err
			}
			defer bs.Close()
			path := filepath.Join(st.dataDir, auditFileName)
			vcfg := audit.Config{Path: path, Store: bs, HeadKey: audit.DefaultHeadKey}
			var readers []io.Reader
			for _, w := range witnesses {
				f, err := os.Open(w)
				if err != nil {
					return fmt.Errorf("witness: %w", err)
				}
				defer f.Close()
				readers = append(readers, f)
			}
			if len(readers) > 0 {
				vcfg.CheckWitness = io.MultiReader(readers...)
			}
			rep, err := audit.Verify(cmd.Context(), vcfg)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(a.stdout, "OK: %s: %d records, chain intact%s%s\n", path, rep.Records, describeAnchor(rep), describeWitness(witnesses, rep))
			return err
		}),
	}
	st.register(cmd.Flags())
	client.register(cmd)
	cmd.Flags().BoolVar(&online, onlineFlag, false, "ask the running server to verify its trail (admin role; client flags, no data directory or key)")
	cmd.Flags().StringArrayVar(&witnesses, "witness", nil, "a file of the witness lines serve --audit-witness wrote (repeat for rotated files): detects a store rolled back to an earlier copy")
	return cmd
}

func describeWitness(witnesses []string, rep audit.Report) string {
	switch {
	case len(witnesses) == 0:
		return " (no --witness: a store rolled back together with the file would not be detected)"
	case rep.Witnessed == nil:
		return "; the witness holds no line of this store"
	default:
		return fmt.Sprintf("; the store is not older than its witness (seq %d)", rep.Witnessed.Seq)
	}
}

func describeAnchor(rep audit.Report) string {
	switch {
	case rep.Anchor == nil:
		return "; no head anchored in the store"
	case rep.BeyondAnchor == 0:
		return fmt.Sprintf(", ends at the anchored head (seq %d)", rep.Anchor.Seq)
	default:
		return fmt.Sprintf("; the anchored head is seq %d and %d records lie beyond it (written while the store was unreachable: they chain, but their removal would not be detected)",
			rep.Anchor.Seq, rep.BeyondAnchor)
	}
}
