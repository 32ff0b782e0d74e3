package vaultstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// A record's safety rests on two settings Vault applies per key: writes
// without check-and-set are refused (cas_required), and old versions, which
// hold refresh tokens already rotated, are dropped beyond a bound
// (max_versions). Set on the key, they cost a metadata write before every
// record's first write: about five Vault writes per onboarding, as many as
// the records themselves. Set on the mount (`vault write MOUNT/config
// cas_required=true`; Vault keeps 10 versions of a key unless told
// otherwise), they cover every key with no write
// at all; the store then skips the per-key write, having read the mount's
// configuration. (A key's max_versions cannot lower the mount's: Vault keeps
// the larger of the two, so a mount bound above the store's is only
// reported.) It reads it again at most every mountConfigRecheck, so a
// mount whose settings are loosened later gets per-key metadata again on
// the records created after.

// mountConfigRecheck is how long a reading of the mount's configuration
// decides whether new records need their own metadata.
const mountConfigRecheck = time.Minute

// ErrMountDeletesVersions is returned by New when the mount deletes versions
// after a time (delete_version_after): a credential not rotated for that
// long would lose its record.
var ErrMountDeletesVersions = errors.New("vaultstore: the KV mount deletes versions after a time")

// mountConfig is what the store knows of the mount's configuration.
type mountConfig struct {
	mu sync.Mutex
	// read is when covers was last decided (zero: never).
	read time.Time
	// covers: the mount requires check-and-set and bounds versions as the
	// record's own metadata would, so a new record needs none.
	covers bool
	// unreadable: the last reading was refused or failed (logged once per
	// change).
	unreadable bool
	// deletesAfter is the mount's delete_version_after as last read.
	deletesAfter time.Duration
}

// kvMountConfig is the part of MOUNT/config the store reads.
type kvMountConfig struct {
	casRequired        bool
	maxVersions        int
	deleteVersionAfter time.Duration
}

// readMountConfig reads MOUNT/config. Denied or failed: an error.
func (s *Store) readMountConfig(ctx context.Context) (kvMountConfig, error) {
	secret, err := s.client.Logical().ReadWithContext(ctx, s.mount+"/config")
	if err != nil {
		return kvMountConfig{}, safeVaultError(err)
	}
	if secret == nil || secret.Data == nil {
		return kvMountConfig{}, errors.New("no configuration returned")
	}
	var c kvMountConfig
	c.casRequired, _ = secret.Data["cas_required"].(bool)
	// vault/api decodes numbers as json.Number (as auth.go reads a ttl);
	// absent is 0, Vault's "unset".
	if n, ok := secret.Data["max_versions"].(json.Number); ok {
		v, err := n.Int64()
		if err != nil {
			return kvMountConfig{}, fmt.Errorf("max_versions %q: %w", n, err)
		}
		c.maxVersions = int(v)
	}
	if after, _ := secret.Data["delete_version_after"].(string); after != "" {
		if c.deleteVersionAfter, err = time.ParseDuration(after); err != nil {
			return kvMountConfig{}, fmt.Errorf("delete_version_after %q: %w", after, err)
		}
	}
	return c, nil
}

// checkMountConfig is New's look at the mount's configuration: it refuses a
// mount that deletes versions after a time, and learns whether new records
// need metadata of their own.
func (s *Store) checkMountConfig(ctx context.Context) error {
	c, err := s.readMountConfig(ctx)
	if err == nil && c.deleteVersionAfter > 0 {
		return fmt.Errorf("%w (%s on %s): a credential not rotated for that long would lose its record; set it to 0 (`vault write %s/config delete_version_after=0s`) or use a mount of its own",
			ErrMountDeletesVersions, c.deleteVersionAfter, s.mount, s.mount)
	}
	s.mountCfg.mu.Lock()
	defer s.mountCfg.mu.Unlock()
	s.noteMountConfig(ctx, c, err)
	return nil
}

// noteMountConfig records a reading of the mount's configuration (c, or the
// error that stopped it) and logs what it changes; mountCfg.mu held.
func (s *Store) noteMountConfig(ctx context.Context, c kvMountConfig, err error) {
	// Vault keeps max(the key's max_versions, the mount's) versions, the
	// default 10 when both are 0: a key's own setting can only lower the
	// bound on a mount without one.
	covers := err == nil && c.casRequired && (c.maxVersions != 0 || s.maxVersions >= DefaultMaxVersions)
	first, wasCovering := s.mountCfg.read.IsZero(), s.mountCfg.covers
	if err == nil && c.deleteVersionAfter != s.mountCfg.deletesAfter {
		s.mountCfg.deletesAfter = c.deleteVersionAfter
		if c.deleteVersionAfter > 0 {
			// Refused at start-up (checkMountConfig); set since, it is
			// only reported.
			s.log.ErrorContext(ctx, "the KV mount now deletes versions after a time: a credential not rotated for that long will lose its record; set it to 0",
				"mount", s.mount, "delete_version_after", c.deleteVersionAfter)
		}
	}
	changed := first || covers != wasCovering || (err != nil) != s.mountCfg.unreadable
	s.mountCfg.read, s.mountCfg.covers, s.mountCfg.unreadable = s.now(), covers, err != nil
	if !changed {
		return
	}
	if err == nil && c.maxVersions > s.maxVersions {
		s.log.WarnContext(ctx, "the KV mount keeps more versions of every record than the store's max versions; Vault keeps the larger of the two",
			"mount", s.mount, "max_versions", c.maxVersions, "store_max_versions", s.maxVersions)
	}
	switch {
	case covers:
		s.log.InfoContext(ctx, "the KV mount requires check-and-set: new records are written without metadata of their own",
			"mount", s.mount)
	case err != nil:
		s.log.InfoContext(ctx, "the KV mount's configuration is not readable: every new record gets metadata of its own (one Vault write more); grant read on MOUNT/config to skip it where the mount requires check-and-set",
			"mount", s.mount, "err", err)
	case wasCovering:
		s.log.WarnContext(ctx, "the KV mount no longer requires check-and-set: new records get metadata of their own again, but records created while it did have none and now accept writes without check-and-set; require it again (`vault write MOUNT/config cas_required=true`) or give each its own (`vault kv metadata put -cas-required=true`)",
			"mount", s.mount, "cas_required", c.casRequired, "max_versions", c.maxVersions)
	default:
		s.log.InfoContext(ctx, "every new record gets metadata of its own (one Vault write more): `vault write MOUNT/config cas_required=true` makes it unnecessary",
			"mount", s.mount, "cas_required", c.casRequired, "max_versions", c.maxVersions, "store_max_versions", s.maxVersions)
	}
}

// mountCoversNewRecords reports whether a new record may go without its
// own metadata, reading the mount's configuration again when the last
// reading is older than mountConfigRecheck (a reading the caller's end
// cut short counts for nothing).
func (s *Store) mountCoversNewRecords(ctx context.Context) bool {
	s.mountCfg.mu.Lock()
	defer s.mountCfg.mu.Unlock()
	if s.now().Sub(s.mountCfg.read) >= mountConfigRecheck {
		c, err := s.readMountConfig(ctx)
		if err != nil && ctx.Err() != nil {
			// The caller gave up: that says nothing of the mount. Keep
			// what was known; the next creation reads it again.
			return s.mountCfg.covers
		}
		s.noteMountConfig(ctx, c, err)
	}
	return s.mountCfg.covers
}

func (s *Store) now() time.Time { return s.lists.now() }
