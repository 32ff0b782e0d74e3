// Package vaultstore keeps Rotavault's records in HashiCorp Vault's KV
// version 2 secrets engine, so that several Rotavault replicas coordinate
// through Vault alone. Every write is a check-and-set write: the KV version
// is the store contract's version, and so the fencing token of a rotation.
//
// It is the only package that imports github.com/hashicorp/vault/api.
package vaultstore

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/rotavault/rotavault/store"
)

// Defaults for Config.
const (
	DefaultMount       = "secret"
	DefaultPrefix      = "rotavault"
	DefaultMaxVersions = 10
)

// Errors returned at start-up, wrapped with details.
var (
	ErrSealed        = errors.New("vaultstore: vault is sealed")
	ErrUnreachable   = errors.New("vaultstore: vault is unreachable")
	ErrMountMissing  = errors.New("vaultstore: KV mount not found")
	ErrNotKVv2       = errors.New("vaultstore: mount is not a KV version 2 secrets engine")
	ErrMissingPolicy = errors.New("vaultstore: the Vault token lacks a capability")
)

// Config selects where in Vault the records live.
type Config struct {
	// Client is an authenticated Vault client. Nil: one is built from the
	// standard environment (VAULT_ADDR, VAULT_TOKEN, VAULT_CACERT,
	// VAULT_CAPATH, VAULT_CLIENT_CERT, VAULT_CLIENT_KEY, VAULT_NAMESPACE…),
	// as the vault CLI does. New wraps the client's retry policy
	// (SetCheckRetry), keeping what it decides, to learn when vault/api
	// resent a write: a resent check-and-set write can be refused by its
	// own first copy, which is then no conflict.
	Client *vault.Client
	// Addresses, when it holds more than one address, are the nodes of a
	// Vault cluster (http(s)://host:port each): every request goes to one
	// of them, and to another when that one is down, sealed or without an
	// active node (see nodeTransport). One address replaces the client's;
	// none keeps it (VAULT_ADDR).
	Addresses []string
	// Mount is the KV v2 mount path (default "secret").
	Mount string
	// Prefix is the path under the mount that holds every record (default
	// "rotavault"). Keys can never escape it.
	Prefix string
	// MaxVersions bounds the history Vault keeps per record (default 10).
	MaxVersions int
	// Login, when set, logs in (AppRole, Kubernetes) instead of using the
	// environment's token, and again whenever the token expires or is
	// revoked.
	Login LoginMethod
	// TransitKey, when set, envelope-encrypts every record under data keys
	// wrapped by this key of the Transit engine at TransitMount (default
	// "transit"), on top of Vault's barrier.
	TransitKey   string
	TransitMount string
	Logger       *slog.Logger
	// ListRefresh is how long a folder's listing kept for ListPage serves
	// before Vault is listed again (default DefaultListRefresh), or ten
	// times the folder's last LIST when that is longer (a LIST of 100,000
	// keys takes seconds): the bound on how late another replica's
	// creations and deletions show in pages of a folder without hints
	// (ListingHints). This store's own writes show at once.
	ListRefresh time.Duration
	// HintedListRefresh is how often, while it is paged, a hinted folder
	// (ListingHints) is listed again in the background (default
	// DefaultHintedListRefresh, or ten times its last LIST): the safety
	// net for changes whose hint was lost. Its pages never wait for it.
	HintedListRefresh time.Duration
	// Now is the clock of the refresh periods (default time.Now), for tests.
	Now func() time.Time
}

// Store is a store.Store backed by Vault KV v2. Safe for concurrent use,
// also by several processes sharing the same Vault path.
type Store struct {
	client      *vault.Client
	kv          *vault.KVv2
	mount       string
	prefix      string
	maxVersions int
	log         *slog.Logger

	nodes *nodeTransport // nil: one address

	envelope  *envelope
	login     LoginMethod
	authMu    sync.Mutex
	authGen   uint64
	logins    atomic.Int64
	newSecret chan *vault.Secret

	// lists are the folders' listings ListPage serves (listpage.go).
	lists *listings
	// mountCfg says whether new records need metadata of their own
	// (mountconfig.go).
	mountCfg mountConfig
	// life ends at Close; listMu guards listClosed, which keeps LISTs from
	// starting once Close waits for wg.
	life       context.Context
	listMu     sync.Mutex
	listClosed bool

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

var _ store.Store = (*Store)(nil)

// maxIdleVaultConns is how many idle connections to Vault a Store keeps.
// Every rotation in flight holds one; vault/api's default (GOMAXPROCS+1, so
// 3 on two cores) makes a busy replica open — and leave in TIME_WAIT — a new
// connection for most writes, which cost a third of the process's CPU in the
// rotation benchmark.
const maxIdleVaultConns = 64

// ClientConfig is vault/api's DefaultConfig (the VAULT_* environment
// variables) with a connection pool sized for concurrent rotations. Check its
// Error field as with DefaultConfig.
func ClientConfig() *vault.Config {
	cfg := vault.DefaultConfig()
	if tr, ok := cfg.HttpClient.Transport.(*http.Transport); ok {
		tr.MaxIdleConns = max(tr.MaxIdleConns, maxIdleVaultConns)
		tr.MaxIdleConnsPerHost = maxIdleVaultConns
	}
	return cfg
}

// New checks the Vault side at once — unsealed, reachable, the mount exists
// and is KV v2, the token has every capability the store needs — so that a
// misconfiguration fails at start-up, not at the first rotation.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Client == nil {
		vcfg := ClientConfig()
		if vcfg.Error != nil {
			return nil, fmt.Errorf("vaultstore: Vault configuration from the environment: %w", vcfg.Error)
		}
		c, err := vault.NewClient(vcfg)
		if err != nil {
			return nil, fmt.Errorf("vaultstore: Vault client: %w", err)
		}
		if c.Token() == "" && cfg.Login == nil {
			return nil, errors.New("vaultstore: no Vault token: set VAULT_TOKEN")
		}
		cfg.Client = c
	}
	markResends(cfg.Client)
	s := &Store{
		client:      cfg.Client,
		mount:       strings.Trim(cfg.Mount, "/"),
		prefix:      strings.Trim(cfg.Prefix, "/"),
		maxVersions: cfg.MaxVersions,
		log:         cfg.Logger,
		login:       cfg.Login,
		newSecret:   make(chan *vault.Secret, 1),
	}
	if s.mount == "" {
		s.mount = DefaultMount
	}
	if s.prefix == "" {
		s.prefix = DefaultPrefix
	}
	if s.maxVersions <= 0 {
		s.maxVersions = DefaultMaxVersions
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if cfg.ListRefresh < 0 {
		return nil, fmt.Errorf("vaultstore: negative list refresh %s", cfg.ListRefresh)
	}
	if cfg.HintedListRefresh < 0 {
		return nil, fmt.Errorf("vaultstore: negative hinted list refresh %s", cfg.HintedListRefresh)
	}
	s.lists = &listings{refresh: cmp.Or(cfg.ListRefresh, DefaultListRefresh), hinted: cmp.Or(cfg.HintedListRefresh, DefaultHintedListRefresh),
		now: cfg.Now, run: s.runList, byPrefix: make(map[string]*listing), hintedFolders: make(map[string]bool)}
	if s.lists.now == nil {
		s.lists.now = time.Now
	}
	switch {
	case len(cfg.Addresses) == 1:
		c, err := s.client.CloneWithHeaders()
		if err != nil {
			return nil, fmt.Errorf("vaultstore: Vault client: %w", err)
		}
		if err := c.SetAddress(cfg.Addresses[0]); err != nil {
			return nil, fmt.Errorf("vaultstore: %w", err)
		}
		c.SetToken(s.client.Token())
		s.client = c
	case len(cfg.Addresses) > 1:
		c, nodes, err := clusterClient(s.client, cfg.Addresses, s.log)
		if err != nil {
			return nil, err
		}
		s.client, s.nodes = c, nodes
	}
	if err := store.ValidateKey(s.mount); err != nil {
		return nil, fmt.Errorf("vaultstore: mount %q: %w", s.mount, err)
	}
	if err := store.ValidateKey(s.prefix); err != nil {
		return nil, fmt.Errorf("vaultstore: prefix %q: %w", s.prefix, err)
	}
	s.kv = s.client.KVv2(s.mount)
	var transit *transitKey
	if cfg.TransitKey != "" {
		transit = &transitKey{mount: strings.Trim(cfg.TransitMount, "/"), key: cfg.TransitKey}
		if transit.mount == "" {
			transit.mount = "transit"
		}
		if err := store.ValidateKey(transit.mount + "/" + transit.key); err != nil {
			return nil, fmt.Errorf("vaultstore: transit key: %w", err)
		}
	}
	var secret *vault.Secret
	if s.login != nil {
		if err := s.loginNow(ctx, 0); err != nil {
			return nil, err
		}
		secret = <-s.newSecret
	}
	if err := s.preflight(ctx); err != nil {
		return nil, err
	}
	if secret == nil {
		var err error
		if secret, err = s.tokenSecret(ctx); err != nil {
			return nil, err
		}
	}
	if err := s.checkCapabilities(ctx, s.requiredCapabilities(secret, transit)); err != nil {
		return nil, err
	}
	if err := s.checkMountConfig(ctx); err != nil {
		return nil, err
	}
	if transit != nil {
		env, err := s.newEnvelope(ctx, transit.mount, transit.key)
		if err != nil {
			return nil, err
		}
		s.envelope = env
	}
	kctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel, s.life = cancel, kctx
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.keepAuthenticated(kctx, secret)
	}()
	return s, nil
}

// Close stops renewing the Vault token and listing folders. The store must not be used after.
func (s *Store) Close() error {
	s.listMu.Lock()
	s.listClosed = true
	s.listMu.Unlock()
	s.cancel()
	s.wg.Wait()
	return nil
}

// Logins counts the logins performed (for tests and metrics).
func (s *Store) Logins() int64 { return s.logins.Load() }

// NodeChanges counts how often the store moved to another node of a Vault
// cluster (Config.Addresses): after the node it used went down, was
// sealed, lost its active node or redirected during an election. Always 0
// with one address.
func (s *Store) NodeChanges() int64 {
	if s.nodes == nil {
		return 0
	}
	return s.nodes.changes.Load()
}

func (s *Store) preflight(ctx context.Context) error {
	health, err := s.client.Sys().HealthWithContext(ctx)
	if err != nil {
		return fmt.Errorf("%w at %s: %v", ErrUnreachable, s.client.Address(), err)
	}
	if health.Sealed {
		return fmt.Errorf("%w: unseal it first", ErrSealed)
	}
	// The same preflight the vault CLI makes for kv commands; it needs no
	// more privilege than any capability on the mount.
	mount, err := s.client.Logical().ReadWithContext(ctx, "sys/internal/ui/mounts/"+s.mount)
	if err != nil || mount == nil || mount.Data == nil {
		return fmt.Errorf("%w: %q (enable it with `vault secrets enable -path=%s kv-v2`): %v", ErrMountMissing, s.mount, s.mount, err)
	}
	typ, _ := mount.Data["type"].(string)
	opts, _ := mount.Data["options"].(map[string]any)
	version, _ := opts["version"].(string)
	if typ != "kv" || version != "2" {
		return fmt.Errorf("%w: %q is type %q version %q", ErrNotKVv2, s.mount, typ, version)
	}
	return nil
}

// transitKey names the Transit key a store envelope-encrypts with.
type transitKey struct{ mount, key string }

// capabilityNeed is what the store needs on one Vault path.
type capabilityNeed struct {
	path string
	caps []string
}

// requiredCapabilities lists every capability the store will use, for
// checkCapabilities; deploy/vault-policy.hcl and
// deploy/vault-policy-transit.hcl grant exactly these. token is the login's
// or the environment token's description (nil: not renewable).
func (s *Store) requiredCapabilities(token *vault.Secret, transit *transitKey) []capabilityNeed {
	probe := s.prefix + "/_capability-probe"
	need := []capabilityNeed{
		{s.mount + "/data/" + probe, []string{"create", "read", "update"}},
		// Metadata is written (cas_required, max_versions), listed and
		// deleted, never read.
		{s.mount + "/metadata/" + probe, []string{"create", "update", "delete", "list"}},
	}
	if token != nil && token.Auth != nil && token.Auth.Renewable {
		need = append(need, capabilityNeed{"auth/token/renew-self", []string{"update"}})
	}
	if transit != nil {
		need = append(need,
			capabilityNeed{transit.mount + "/datakey/plaintext/" + transit.key, []string{"update"}},
			capabilityNeed{transit.mount + "/decrypt/" + transit.key, []string{"update"}})
	}
	return need
}

// checkCapabilities asks Vault, in one request, whether the token has every
// capability in need, so that a missing one fails at start-up with its name
// rather than at the first rotation or token renewal.
func (s *Store) checkCapabilities(ctx context.Context, need []capabilityNeed) error {
	paths := make([]string, len(need))
	for i, n := range need {
		paths[i] = n.path
	}
	answer, err := s.client.Logical().WriteWithContext(ctx, "sys/capabilities-self", map[string]any{"paths": paths})
	if isPermissionDenied(err) {
		return fmt.Errorf("%w: update on sys/capabilities-self, with which start-up checks the others", ErrMissingPolicy)
	}
	if err != nil || answer == nil {
		return fmt.Errorf("vaultstore: checking the token's capabilities: %w", safeVaultError(err))
	}
	for _, n := range need {
		raw, _ := answer.Data[n.path].([]any)
		have := make([]string, 0, len(raw))
		for _, c := range raw {
			if c, ok := c.(string); ok {
				have = append(have, c)
			}
		}
		if missing := missingCapabilities(have, n.caps); len(missing) > 0 {
			return fmt.Errorf("%w: %s on %s (it has %v)", ErrMissingPolicy, strings.Join(missing, ", "), n.path, have)
		}
	}
	return nil
}

func missingCapabilities(have, need []string) []string {
	set := make(map[string]bool, len(have))
	for _, c := range have {
		set[c] = true
	}
	if set["root"] {
		return nil
	}
	var missing []string
	for _, c := range need {
		if !set[c] {
			missing = append(missing, c)
		}
	}
	return missing
}

func (s *Store) path(key string) (string, error) {
	if err := store.ValidateKey(key); err != nil {
		return "", err
	}
	return s.prefix + "/" + key, nil
}

// valueField holds the record's bytes, base64-encoded, in the KV secret.
const valueField = "value"

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, key string) (store.Record, error) {
	p, err := s.path(key)
	if err != nil {
		return store.Record{}, err
	}
	var secret *vault.KVSecret
	err = s.do(ctx, func() (err error) {
		secret, err = s.kv.Get(ctx, p)
		return err
	})
	if err != nil {
		if errors.Is(err, vault.ErrSecretNotFound) || isNotFound(err) {
			return store.Record{}, fmt.Errorf("vaultstore: get %s: %w", key, store.ErrNotFound)
		}
		return store.Record{}, s.wrap(ctx, "get", key, err)
	}
	if secret == nil || secret.Data == nil || secret.VersionMetadata == nil {
		return store.Record{}, fmt.Errorf("vaultstore: get %s: %w", key, store.ErrNotFound)
	}
	var value []byte
	if _, sealed := secret.Data["sealed"]; sealed {
		if s.envelope == nil {
			return store.Record{}, fmt.Errorf("vaultstore: get %s: %w: it is Transit-encrypted and no Transit key is configured", key, ErrUndecryptable)
		}
		if value, err = s.open(ctx, s.envelope, p, secret.Data); err != nil {
			return store.Record{}, fmt.Errorf("vaultstore: get %s: %w", key, err)
		}
	} else {
		encoded, _ := secret.Data[valueField].(string)
		if value, err = base64.StdEncoding.DecodeString(encoded); err != nil {
			return store.Record{}, fmt.Errorf("vaultstore: get %s: malformed record", key)
		}
	}
	return store.Record{Key: key, Value: value, Version: uint64(secret.VersionMetadata.Version)}, nil
}

// Put implements store.Store with a check-and-set write on the KV version.
func (s *Store) Put(ctx context.Context, key string, value []byte, expectedVersion uint64) (uint64, error) {
	p, err := s.path(key)
	if err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("vaultstore: put %s: %w", key, err)
	}
	if expectedVersion == 0 && !s.mountCoversNewRecords(ctx) {
		// A new record on a mount that does not do it for every key: make
		// Vault refuse any write without check-and-set to it, and bound its
		// history. Idempotent, so a lost creation race does no harm.
		if err := s.do(ctx, func() error {
			return s.kv.PutMetadata(ctx, p, vault.KVMetadataPutInput{CASRequired: true, MaxVersions: s.maxVersions})
		}); err != nil {
			return 0, s.wrap(ctx, "put metadata", key, err)
		}
	}
	var secret *vault.KVSecret
	sendCtx, resent := withResendMark(ctx)
	err = s.do(ctx, func() (err error) {
		secret, err = s.kv.Put(sendCtx, p, s.encode(p, value), vault.WithCheckAndSet(int(expectedVersion)))
		return err
	})
	if err != nil {
		if isCASMismatch(err) {
			if v, ok := s.wroteItself(ctx, key, value, expectedVersion, resent.Load()); ok {
				s.lists.note(key, true)
				return v, nil
			}
			if expectedVersion == 0 {
				s.lists.note(key, true) // it exists: another writer created it
			}
			return 0, fmt.Errorf("vaultstore: put %s at version %d: %w", key, expectedVersion, store.ErrConflict)
		}
		return 0, s.wrap(ctx, "put", key, err)
	}
	s.lists.note(key, true)
	if secret == nil || secret.VersionMetadata == nil {
		return 0, fmt.Errorf("vaultstore: put %s: vault returned no version", key)
	}
	return uint64(secret.VersionMetadata.Version), nil
}

// wroteItself reports whether a write refused as a check-and-set mismatch
// was in fact this very write, applied once already: vault/api resends a
// request whose answer was lost (a connection reset after Vault applied
// it; VAULT_MAX_RETRIES, 2 by default), and the resent copy then finds the
// version its first copy made. Only a resent write (resent) can be refused
// by itself; it was when the record right after expectedVersion holds
// exactly value (Delete removes a key's metadata, so a creation is version
// 1). Were another writer to have written the very same bytes at that
// version while the answer was lost, the store holds what this write meant
// to write either way; Rotavault's records name their writer's claim or
// generation, so that does not happen to them.
func (s *Store) wroteItself(ctx context.Context, key string, value []byte, expectedVersion uint64, resent bool) (uint64, bool) {
	if !resent {
		return 0, false
	}
	rec, err := s.Get(ctx, key)
	if err != nil || rec.Version != expectedVersion+1 || !bytes.Equal(rec.Value, value) {
		return 0, false
	}
	return rec.Version, true
}

// resendMark is the context key of a request's resend flag (see
// withResendMark).
type resendMark struct{}

// withResendMark returns ctx carrying a flag that the retry policy the
// store installs (markResends) sets when vault/api sends the request again.
func withResendMark(ctx context.Context) (context.Context, *atomic.Bool) {
	var resent atomic.Bool
	return context.WithValue(ctx, resendMark{}, &resent), &resent
}

// markResends wraps c's retry policy so that a request carrying a resend
// flag (withResendMark) learns that it was sent more than once.
func markResends(c *vault.Client) {
	policy := c.CheckRetry()
	if policy == nil {
		policy = vault.DefaultRetryPolicy
	}
	c.SetCheckRetry(func(ctx context.Context, resp *http.Response, err error) (bool, error) {
		retry, perr := policy(ctx, resp, err)
		if resent, ok := ctx.Value(resendMark{}).(*atomic.Bool); ok && retry && perr == nil {
			resent.Store(true)
		}
		return retry, perr
	})
}

func (s *Store) encode(path string, value []byte) map[string]any {
	if s.envelope != nil {
		return s.envelope.seal(path, value)
	}
	return map[string]any{valueField: base64.StdEncoding.EncodeToString(value)}
}

// safeVaultError keeps the HTTP status and Vault's error text and drops the
// rest (URLs, request details), for errors that may travel.
func safeVaultError(err error) error {
	var re *vault.ResponseError
	if errors.As(err, &re) {
		return fmt.Errorf("vault answered HTTP %d: %s", re.StatusCode, strings.Join(re.Errors, "; "))
	}
	if err == nil {
		return errors.New("no answer")
	}
	return errors.New("vault unreachable")
}

// Delete implements store.Store: it deletes the metadata, which destroys
// every version (a KV v2 delete alone is a soft delete).
func (s *Store) Delete(ctx context.Context, key string) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := s.do(ctx, func() error { return s.kv.DeleteMetadata(ctx, p) }); err != nil && !isNotFound(err) {
		return s.wrap(ctx, "delete", key, err)
	}
	s.lists.note(key, false)
	return nil
}

// List implements store.Store. The first List of a hinted folder
// (ListingHints) also builds the folder's listing for ListPage.
func (s *Store) List(ctx context.Context, prefix string) ([]string, error) {
	if err := store.ValidatePrefix(prefix); err != nil {
		return nil, err
	}
	if keys, ok, err := s.lists.first(ctx, prefix); ok {
		return keys, err
	}
	return s.list(ctx, prefix)
}

// list sends one LIST of prefix to Vault.
func (s *Store) list(ctx context.Context, prefix string) ([]string, error) {
	var secret *vault.Secret
	err := s.do(ctx, func() (err error) {
		secret, err = s.client.Logical().ListWithContext(ctx, s.mount+"/metadata/"+s.prefix+"/"+prefix)
		return err
	})
	if err != nil {
		return nil, s.wrap(ctx, "list", prefix, err)
	}
	var keys []string
	if secret != nil && secret.Data != nil {
		raw, _ := secret.Data["keys"].([]any)
		for _, k := range raw {
			name, _ := k.(string)
			if name == "" || strings.HasSuffix(name, "/") {
				continue // a deeper level
			}
			keys = append(keys, prefix+name)
		}
	}
	sort.Strings(keys)
	return keys, nil
}

// isCASMismatch recognises Vault's check-and-set failure. Vault reports it
// only as HTTP 400 with this text; this is the one place that knows.
func isCASMismatch(err error) bool {
	var re *vault.ResponseError
	if !errors.As(err, &re) || re.StatusCode != http.StatusBadRequest {
		return false
	}
	for _, msg := range re.Errors {
		if strings.Contains(msg, "check-and-set parameter did not match the current version") {
			return true
		}
	}
	return false
}

func isNotFound(err error) bool {
	var re *vault.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusNotFound
}

// wrap reports a Vault failure without the Vault URL or token: callers may
// show the message to clients.
func (s *Store) wrap(ctx context.Context, op, key string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("vaultstore: %s %s: %w", op, key, ctxErr)
	}
	s.log.WarnContext(ctx, "vault request failed", "op", op, "key", key, "err", err)
	return fmt.Errorf("vaultstore: %s %s: %w", op, key, safeVaultError(err))
}
