package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/rotavault/rotavault/boltstore"
)

// offlineOpenTimeout is how long offline commands wait for the store's
// lock: a running server holds it for good, so waiting longer helps nobody.
const offlineOpenTimeout = time.Second

func newStoreCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "store",
		Short: "Maintain the embedded store: backup (offline or online), key rotation, key generation",
		Long: `Maintain the embedded store (DATA_DIR/rotavault.db). A running server holds
the store's lock: stop it first, except for store backup --online, which
asks the running server for the copy.`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRunE,
	}
	cmd.AddCommand(newStoreBackupCmd(a), newStoreRotateKeyCmd(a), newStoreGenerateKeyCmd(a))
	return cmd
}

// offlineStore are the flags of commands that open the store themselves.
type offlineStore struct {
	dataDir string
	keys    keyFlags
}

func (o *offlineStore) register(fs *pflag.FlagSet) {
	fs.StringVar(&o.dataDir, "data-dir", "", "the server's data directory, holding rotavault.db (required)")
	bindEnv(fs, "data-dir", serverEnvName("data-dir"))
	o.keys.register(fs)
}

// open opens an existing store; it never creates one.
func (o *offlineStore) open(a *app) (*boltstore.Store, boltstore.Key, error) {
	if o.dataDir == "" {
		return nil, boltstore.Key{}, usageErrorf("--data-dir is required (or set %s)", serverEnvName("data-dir"))
	}
	key, previous, err := o.keys.load(a)
	if err != nil {
		return nil, boltstore.Key{}, err
	}
	path := filepath.Join(o.dataDir, storeFileName)
	if _, err := os.Stat(path); err != nil {
		return nil, boltstore.Key{}, fmt.Errorf("no store at %s: %w", path, err)
	}
	st, err := openStore(o.dataDir, key, boltstore.Options{PreviousKeys: previous, OpenTimeout: offlineOpenTimeout})
	if err != nil {
		return nil, boltstore.Key{}, err
	}
	return st, key, nil
}

func newStoreBackupCmd(a *app) *cobra.Command {
	var (
		store  offlineStore
		client clientOptions
		out    string
		online bool
	)
	cmd := &cobra.Command{
		Use:   "backup (--data-dir DIR --store-key-file KEY | --online) --out FILE",
		Short: "Write a consistent copy of the store, offline or from the running server",
		Long: `Write a consistent copy of the store to --out (mode 0600; an existing file
is never overwritten). The copy is itself a store, sealed under the same
key: keep the key with it, or the backup is useless, and keep them apart
from each other, or the backup is readable by whoever finds it.

Offline (--data-dir and the store key) the server must be stopped. With
--online the running server streams the copy, taken in one read
transaction while it goes on serving (rotations included); this needs the
admin role and the client flags (--server, --tls-*, --token-file), not the
data directory or the key: the copy arrives sealed, and is written to a
temporary file next to --out that becomes --out only once complete.
--timeout bounds the whole transfer (default 10m with --online). One online
backup runs at a time per server (another exits 5: retry later). The Vault
backend has none: back Vault up with its own snapshots (vault operator raft
snapshot save), which hold Rotavault's records sealed as they are.

To restore, stop the server and put the copy in place of DATA_DIR/rotavault.db.
The copy does not hold the audit trail (DATA_DIR/audit.jsonl), but it does
hold the trail's key and anchored head: back the trail up after the store,
and restore both. A server refuses to start on a restored store without a
trail that reaches the head the copy anchors (records written after the
backup are accepted). Against a witness (serve --audit-witness), a restored
store is older than the heads witnessed since the backup: audit verify
--witness reports it, as it would a rollback by an attacker.
Remember what a restore means with rotating providers: the refresh tokens
in an old backup have usually been rotated away since, and presenting them
revokes the family. Expect to reauthenticate credentials that rotated after
the backup.

Examples:
  rotavault store backup --data-dir /var/lib/rotavault --store-key-file /etc/rotavault/store.key \
      --out /backups/rotavault-$(date +%F).db
  rotavault store backup --online --server rotavault.internal:8443 --tls-ca ca.pem \
      --tls-cert admin.pem --tls-key admin-key.pem --out /backups/rotavault-$(date +%F).db`,
		Args: args(cobra.NoArgs),
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageErrorf("--out is required")
			}
			if online {
				if !cmd.Flags().Changed("timeout") {
					client.timeout = onlineBackupTimeout
				}
				size, keyID, err := onlineBackup(cmd.Context(), &client, out)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(a.stdout, "backup of the running server written to %s (%d bytes, sealed under key %s)\n", out, size, keyID)
				return err
			}
			st, key, err := store.open(a)
			if err != nil {
				return err
			}
			defer st.Close()
			if err := writeBackup(cmd.Context(), st, out); err != nil {
				return err
			}
			_, err = fmt.Fprintf(a.stdout, "backup written to %s (sealed under key %s)\n", out, key.ID())
			return err
		}),
	}
	store.register(cmd.Flags())
	client.register(cmd)
	cmd.Flags().StringVar(&out, "out", "", "file to write the backup to (required; must not exist)")
	cmd.Flags().BoolVar(&online, onlineFlag, false, "take the backup from the running server (admin role; client flags, no data directory or key)")
	return cmd
}

// writeBackup writes the copy to a new file, removing it if anything fails.
func writeBackup(ctx context.Context, st *boltstore.Store, path string) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return usageErrorf("--out %s exists; choose a new file", path)
		}
		return fmt.Errorf("create backup: %w", err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(path)
		}
	}()
	if err := st.Backup(ctx, f); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	return f.Close()
}

func newStoreRotateKeyCmd(a *app) *cobra.Command {
	var (
		store   offlineStore
		newFile string
	)
	cmd := &cobra.Command{
		Use:   "rotate-key --data-dir DIR --store-key-file OLD --new-key-file NEW",
		Short: "Re-encrypt every record under a new store key",
		Long: `Re-seal every record of the store under the key in --new-key-file, in one
transaction: all records move, or none do. Afterwards the store opens with
the new key alone, and no longer with the old one: start the server with
--store-key-file NEW. Back the store up first.

Create the new key with ` + "`rotavault store generate-key`" + `.

Examples:
  rotavault store generate-key --out /etc/rotavault/store-2.key
  rotavault store rotate-key --data-dir /var/lib/rotavault \
      --store-key-file /etc/rotavault/store.key --new-key-file /etc/rotavault/store-2.key`,
		Args: args(cobra.NoArgs),
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			if newFile == "" {
				return usageErrorf("--new-key-file is required; create one with `rotavault store generate-key --out FILE`")
			}
			newKey, err := boltstore.LoadKeyFile(newFile)
			if err != nil {
				return fmt.Errorf("new key: %w", err)
			}
			st, oldKey, err := store.open(a)
			if err != nil {
				return err
			}
			defer st.Close()
			if newKey.ID() == oldKey.ID() {
				return usageErrorf("--new-key-file holds the current key (id %s); generate a new one", oldKey.ID())
			}
			n, err := st.RotateKey(cmd.Context(), newKey)
			if err != nil {
				return fmt.Errorf("rotate key: %w", err)
			}
			if err := st.Close(); err != nil {
				return fmt.Errorf("close store: %w", err)
			}
			_, err = fmt.Fprintf(a.stdout, "re-encrypted %d records under key %s (was %s).\nStart the server with --store-key-file %s: the old key no longer opens this store.\n",
				n, newKey.ID(), oldKey.ID(), newFile)
			return err
		}),
	}
	store.register(cmd.Flags())
	cmd.Flags().StringVar(&newFile, "new-key-file", "", "file holding the new key (required)")
	return cmd
}

func newStoreGenerateKeyCmd(a *app) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "generate-key --out FILE",
		Short: "Create a new random store key file (mode 0600)",
		Long: `Create FILE holding a new random 256-bit store key (base64, mode 0600).
An existing file is never overwritten. Anyone who reads this file can read
every stored credential: keep it off the data directory's backups.

Examples:
  rotavault store generate-key --out /etc/rotavault/store.key`,
		Args: args(cobra.NoArgs),
		RunE: runE(func(_ *cobra.Command, _ []string) error {
			if out == "" {
				return usageErrorf("--out is required")
			}
			key, err := boltstore.GenerateKeyFile(out)
			if errors.Is(err, fs.ErrExist) {
				return usageErrorf("--out %s exists; choose a new file", out)
			}
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(a.stdout, "new store key %s written to %s\n", key.ID(), out)
			return err
		}),
	}
	cmd.Flags().StringVar(&out, "out", "", "file to create (required; must not exist)")
	return cmd
}
