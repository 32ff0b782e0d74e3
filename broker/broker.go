// Package broker is Rotavault's rotation logic: it owns each credential's
// refresh token, hands out access tokens, makes sure one refresh runs per
// rotation however many callers wait, stores every rotated refresh token
// before anyone sees the access token that came with it, and turns the
// provider's verdicts into family revocations and notices.
//
// It knows nothing of gRPC. It depends on small interfaces: a versioned store
// (store.Store), an OAuth provider client and an audit sink.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/catalog"
	"github.com/rotavault/rotavault/broker/detect"
	"github.com/rotavault/rotavault/broker/internal/authflow"
	"github.com/rotavault/rotavault/broker/notice"
	"github.com/rotavault/rotavault/internal/credid"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store"
)

// Provider is the OAuth client the broker needs. *provider.Client implements
// it.
type Provider interface {
	Refresh(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, refreshToken string) (*provider.Token, error)
	ExchangeCode(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, code, redirectURI, codeVerifier string) (*provider.Token, error)
	AuthCodeURL(ep provider.Endpoint, cc provider.ClientCredentials, redirectURI, state, codeChallenge string, scopes []string) (string, error)
	Revoke(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, token string) error
	// IntrospectToken asks the introspection endpoint about an access or a
	// refresh token (RFC 7662); it must never present a refresh token for a
	// refresh.
	IntrospectToken(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, token string, hint provider.TokenTypeHint) (provider.Introspection, error)
	StartDeviceAuthorization(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, scopes []string) (*provider.DeviceAuthorization, error)
	PollDeviceToken(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, deviceCode string) (*provider.Token, error)
}

// Auditor records audit events. *audit.FileLog implements it.
type Auditor interface {
	Record(ctx context.Context, e audit.Event) error
}

// Config holds the broker's required dependencies.
type Config struct {
	Store    store.Store
	Provider Provider
	Auditor  Auditor
}

// Option tunes a broker.
type Option func(*options) error

type options struct {
	logger            *slog.Logger
	now               func() time.Time
	expiryDelta       time.Duration
	refreshTimeout    time.Duration
	schedulerInterval time.Duration
	rejectionInterval time.Duration

	// discoveryInterval is how often issuers' metadata is fetched again
	// (discovery.go); 0 turns the refetch off.
	discoveryInterval time.Duration

	retryBase         time.Duration
	notProcessedTries int
	closeGrace        time.Duration
	replicaID         string
	claimTTL          time.Duration
	claimMargin       time.Duration
	claimPoll         time.Duration
	// exclusiveStore: no other process uses the store (WithExclusiveStore).
	exclusiveStore bool
	// dutyLeasePeriod: duties.go; 0 turns sharing off.
	dutyLeasePeriod time.Duration

	// The parts' options, one struct per part; New fills in what the
	// broker shares with them (clock, logger, goroutines).
	notice notice.Options
	detect detect.Config // an Interval of 0 turns periodic detection off
	flow   authflow.Options
}

func defaultOptions() options {
	return options{
		logger:            slog.New(slog.DiscardHandler),
		now:               time.Now,
		expiryDelta:       10 * time.Second,
		refreshTimeout:    2 * time.Minute,
		schedulerInterval: 5 * time.Second,
		rejectionInterval: 30 * time.Second,

		discoveryInterval: DefaultDiscoveryInterval,

		retryBase:         200 * time.Millisecond,
		notProcessedTries: 4,
		closeGrace:        30 * time.Second,
		replicaID:         newReplicaID(),
		claimTTL:          45 * time.Second,
		claimMargin:       15 * time.Second,
		claimPoll:         50 * time.Millisecond,
		dutyLeasePeriod:   DefaultDutyLeasePeriod,

		notice: notice.Options{Retention: 10000, Buffer: 256, Poll: 500 * time.Millisecond},
		detect: detect.Config{Interval: DefaultIntrospectionInterval, Concurrency: DefaultIntrospectionConcurrency},
		flow:   authflow.Options{Lifetime: 10 * time.Minute, MaxFlows: MaxPendingFlows},
	}
}

// WithLogger sets the structured logger (default: discard).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error {
		if l == nil {
			return errors.New("broker: nil logger")
		}
		o.logger = l
		return nil
	}
}

// WithClock injects the clock, for tests.
func WithClock(now func() time.Time) Option {
	return func(o *options) error {
		if now == nil {
			return errors.New("broker: nil clock")
		}
		o.now = now
		return nil
	}
}

// WithExpiryDelta sets how long before its expiry an access token stops being
// handed out (default 10s, but never more than a quarter of the token's
// lifetime, see expiryMargin): a consumer needs time to use it.
func WithExpiryDelta(d time.Duration) Option {
	return durationOption("expiry delta", d, 0, time.Hour, func(o *options) { o.expiryDelta = d })
}

// WithSchedulerInterval sets how often proactive refreshes are considered
// (default 5s).
func WithSchedulerInterval(d time.Duration) Option {
	return durationOption("scheduler interval", d, 10*time.Millisecond, time.Hour, func(o *options) { o.schedulerInterval = d })
}

// WithRejectionInterval sets the least time between two refreshes triggered
// by rejected-token reports for one credential (default 30s).
func WithRejectionInterval(d time.Duration) Option {
	return durationOption("rejection interval", d, 0, time.Hour, func(o *options) { o.rejectionInterval = d })
}

// WithIntrospectionInterval sets how often each active family's refresh
// token is introspected at the provider to detect a revocation there (a
// reused old token, an admin) before the next refresh would meet it (default
// 5m; 0 turns periodic detection off). Only credentials whose provider has
// an introspection endpoint are checked. Each family is checked once per
// interval, ±10% jitter, spread over the interval, by the replica holding
// its duty lease (duties.go): the provider sees credentials / interval
// introspection calls however many replicas run, and the store is read only
// when the provider reports a token inactive. See detect.go.
func WithIntrospectionInterval(d time.Duration) Option {
	return func(o *options) error {
		if d != 0 && (d < 10*time.Millisecond || d > 24*time.Hour) {
			return fmt.Errorf("broker: introspection interval %s out of range: 0 (off) or [10ms, 24h]", d)
		}
		o.detect.Interval = d
		return nil
	}
}

// WithIntrospectionConcurrency bounds the introspection calls of periodic
// detection in flight at once (default 32). One replica checks
// credentials / interval families a second; it keeps up while that stays
// below concurrency / introspection latency.
func WithIntrospectionConcurrency(n int) Option {
	return func(o *options) error {
		if n < 1 || n > 1024 {
			return fmt.Errorf("broker: introspection concurrency %d out of range [1, 1024]", n)
		}
		o.detect.Concurrency = n
		return nil
	}
}

// WithRetryBase sets the first backoff step for retries of provider calls the
// provider surely did not process (default 200ms, doubling).
func WithRetryBase(d time.Duration) Option {
	return durationOption("retry base", d, time.Millisecond, time.Minute, func(o *options) { o.retryBase = d })
}

// WithRefreshTimeout bounds one refresh, retries included (default 60s).
func WithRefreshTimeout(d time.Duration) Option {
	return durationOption("refresh timeout", d, 100*time.Millisecond, 10*time.Minute, func(o *options) { o.refreshTimeout = d })
}

// WithReplicaID names this replica in refresh claims (default: random per
// process). Two live replicas must never share one.
func WithReplicaID(id string) Option {
	return func(o *options) error {
		if id == "" || len(id) > 64 || !printable(id) {
			return errors.New("broker: replica id must be 1-64 printable characters")
		}
		o.replicaID = id
		return nil
	}
}

// WithClaimTiming sets how long a refresh claim lasts and how long before
// its end the holder's provider calls must finish (defaults 45s and 15s).
// The margin is the bound on process pauses plus clock skew between
// replicas under which no two replicas present the same refresh token.
func WithClaimTiming(ttl, margin time.Duration) Option {
	return func(o *options) error {
		if margin <= 0 || ttl <= 2*margin || ttl > 10*time.Minute {
			return fmt.Errorf("broker: claim ttl %s must exceed twice the margin %s (and be at most 10m)", ttl, margin)
		}
		o.claimTTL, o.claimMargin = ttl, margin
		return nil
	}
}

// WithExclusiveStore says that no other process can use the store while
// this broker runs: the embedded store, whose file lock holds while its
// process lives. A refresh claim of another replica id found there is then
// a previous process's, which died (maybe after presenting the token): it
// is taken over at once, in doubt, instead of after its deadline (45 s by
// default), so callers after a restart need not wait for it. Never set it
// on a store replicas share.
func WithExclusiveStore() Option {
	return func(o *options) error {
		o.exclusiveStore = true
		return nil
	}
}

// WithNoticePollInterval sets how often this replica reads the notice log's
// head for notices other replicas appended (default 500ms): the bound on how
// late their notices reach this replica's watchers, at one store read per
// interval whatever the number of credentials.
func WithNoticePollInterval(d time.Duration) Option {
	return durationOption("notice poll interval", d, 10*time.Millisecond, time.Minute, func(o *options) { o.notice.Poll = d })
}

// WithMaxFlows sets how many authorization flows the store may hold at once
// (default MaxPendingFlows); further starts fail with ErrTooManyFlows.
func WithMaxFlows(n int) Option {
	return func(o *options) error {
		if n < 1 || n > 100_000 {
			return fmt.Errorf("broker: max flows %d out of range [1, 100000]", n)
		}
		o.flow.MaxFlows = n
		return nil
	}
}

// WithNoticeRetention sets how many notices the notice log keeps for
// resuming watchers (default 10,000).
func WithNoticeRetention(n int) Option {
	return func(o *options) error {
		if n < 1 || n > 1_000_000 {
			return fmt.Errorf("broker: notice retention %d out of range [1, 1000000]", n)
		}
		o.notice.Retention = n
		return nil
	}
}

func durationOption(name string, d, lo, hi time.Duration, set func(*options)) Option {
	return func(o *options) error {
		if d < lo || d > hi {
			return fmt.Errorf("broker: %s %s out of range [%s, %s]", name, d, lo, hi)
		}
		set(o)
		return nil
	}
}

// Broker is the rotation logic. Safe for concurrent use. Create it with New,
// stop it with Close.
type Broker struct {
	store    store.Store
	provider Provider
	auditor  Auditor
	opts     options
	log      *slog.Logger

	// ctx bounds the work the broker owns (refreshes, the scheduler); Close
	// cancels it and waits for wg.
	ctx           context.Context
	cancel        context.CancelFunc
	stopScheduler context.CancelFunc
	wg            sync.WaitGroup
	// lifeMu orders "start tracked work" against Close, so no goroutine is
	// added to wg once Close waits on it.
	lifeMu sync.Mutex
	closed atomic.Bool

	// entriesMu guards the map only; the hot path takes it for reading.
	entriesMu sync.RWMutex
	entries   map[string]*entry

	notices *notice.Log
	// flows runs the authorization flows: device-flow pollers and the flow
	// sweeper (package authflow).
	flows *authflow.Flows
	// catalog is the consumer catalog (package catalog).
	catalog *catalog.Catalog
	// duties says which shared duties this replica does (duties.go).
	duties  dutyShards
	metrics counters
}

type counters struct {
	claimWaits             atomic.Int64
	cacheHits, cacheMisses atomic.Int64
	// rotationsHeldBack counts calls the rotation floor kept from a refresh
	// (see rotationInterval).
	rotationsHeldBack atomic.Int64
	// cutoffWaits counts calls that waited for a rotation because the
	// token was past its cutoff; offScheduleRotations the rotations this
	// replica announced to the others (cutoff.go).
	cutoffWaits, offScheduleRotations atomic.Int64
	refreshes                         atomic.Int64
	refreshFailures                   [numRefreshFailures]atomic.Int64
	// discoveries and discoveryFailures count metadata fetches.
	discoveries, discoveryFailures atomic.Int64
	// revocations is guarded by revocationsMu: reasons are few, revocations
	// rare.
	revocationsMu sync.Mutex
	revocations   map[RevocationReason]int64
}

// Stats are counters a test or an operator may read. They count what this
// replica did since it started.
type Stats struct {
	// ClaimWaits counts waits for another replica's refresh.
	ClaimWaits int64
	// ConsumerTokensDropped counts access tokens this replica handed to
	// identities it could not add to a full consumer catalog.
	ConsumerTokensDropped int64
	// CacheHits counts GetAccessToken calls answered from the cached token;
	// CacheMisses those that needed a refresh, a wait for one, or the store.
	CacheHits, CacheMisses int64
	// RotationsHeldBack counts GetAccessToken calls that wanted a refresh
	// the rotation floor did not allow yet (the credential was refreshed
	// less than max(half its tokens' lifetime, 5 s) ago): they got the
	// current token, or UNAVAILABLE when it had expired.
	RotationsHeldBack int64
	// CutoffWaits counts GetAccessToken calls that found the token
	// unexpired but past its serving cutoff (a replica may have rotated it
	// at a provider that kills the previous access token) and waited for
	// the rotation instead.
	CutoffWaits int64
	// OffScheduleRotations counts rotations this replica made before the
	// previous access token's cutoff and announced to the other replicas.
	OffScheduleRotations int64
	// Refreshes counts rotations this replica completed and stored.
	Refreshes int64
	// RefreshFailures counts refreshes this replica gave up on, by reason:
	// provider_unavailable, store_unavailable, reauthentication_required
	// (the family was revoked), client_rejected, other.
	RefreshFailures map[string]int64
	// Revocations counts families this replica marked revoked, by reason.
	Revocations map[RevocationReason]int64
	// Discoveries counts provider metadata documents this replica fetched
	// (for --issuer); DiscoveryFailures the fetches that failed or were
	// refused (too large, another issuer, an insecure endpoint).
	Discoveries, DiscoveryFailures int64
	// NoticeLogReadAt is when this replica last read the shared notice log
	// successfully: how current its view of the store is.
	NoticeLogReadAt time.Time
	// Duties are this replica's share of the duties (duties.go).
	Duties DutyStats
}

// Stats returns the broker's counters.
func (b *Broker) Stats() Stats {
	m := &b.metrics
	s := Stats{
		ClaimWaits: m.claimWaits.Load(), ConsumerTokensDropped: b.catalog.Dropped(),
		CacheHits: m.cacheHits.Load(), CacheMisses: m.cacheMisses.Load(), Refreshes: m.refreshes.Load(),
		RotationsHeldBack: m.rotationsHeldBack.Load(),
		CutoffWaits:       m.cutoffWaits.Load(), OffScheduleRotations: m.offScheduleRotations.Load(),
		Discoveries: m.discoveries.Load(), DiscoveryFailures: m.discoveryFailures.Load(),
		RefreshFailures: make(map[string]int64, numRefreshFailures),
		Revocations:     make(map[RevocationReason]int64),
		NoticeLogReadAt: b.notices.LastRead(),
		Duties:          b.duties.Stats(),
	}
	for i := range m.refreshFailures {
		s.RefreshFailures[refreshFailureNames[i]] = m.refreshFailures[i].Load()
	}
	m.revocationsMu.Lock()
	for r, n := range m.revocations {
		s.Revocations[r] = n
	}
	m.revocationsMu.Unlock()
	return s
}

const (
	failProviderUnavailable = iota
	failStoreUnavailable
	failReauthRequired
	failClientRejected
	failOther
	numRefreshFailures
)

var refreshFailureNames = [numRefreshFailures]string{"provider_unavailable", "store_unavailable", "reauthentication_required", "client_rejected", "other"}

// countRefresh records how a refresh this replica ran ended.
func (b *Broker) countRefresh(err error) {
	if err == nil {
		b.metrics.refreshes.Add(1)
		return
	}
	kind := failOther
	var ue *UnavailableError
	switch {
	case errors.As(err, &ue) && ue.Component == ComponentProvider:
		kind = failProviderUnavailable
	case errors.As(err, &ue):
		kind = failStoreUnavailable
	case errors.Is(err, ErrReauthRequired):
		kind = failReauthRequired
	case errors.Is(err, ErrClientRejected):
		kind = failClientRejected
	}
	b.metrics.refreshFailures[kind].Add(1)
}

func (b *Broker) countRevocation(r RevocationReason) {
	b.metrics.revocationsMu.Lock()
	defer b.metrics.revocationsMu.Unlock()
	if b.metrics.revocations == nil {
		b.metrics.revocations = make(map[RevocationReason]int64)
	}
	b.metrics.revocations[r]++
}

// New returns a broker and starts its scheduler. It loads the credentials
// from the store, so store trouble fails here, not at the first call.
func New(ctx context.Context, cfg Config, opts ...Option) (*Broker, error) {
	if cfg.Store == nil || cfg.Provider == nil || cfg.Auditor == nil {
		return nil, errors.New("broker: Config needs Store, Provider and Auditor")
	}
	o := defaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	b := &Broker{
		store:    cfg.Store,
		provider: cfg.Provider,
		auditor:  cfg.Auditor,
		opts:     o,
		log:      o.logger,
		ctx:      bctx,
		cancel:   cancel,
		entries:  make(map[string]*entry),
		duties:   allDuties{}, // until joinDuties
	}
	b.notices = notice.New(b.store, o.notice, o.now, b.log)
	b.catalog = catalog.New(b.store, catalogCredentials{b}, b.log)
	flowOpts := o.flow
	flowOpts.RetryBase = o.retryBase
	b.flows = authflow.New(authflow.Config{Store: b.store, Provider: b.provider, Core: flowCore{b}, Now: o.now, Logger: b.log,
		ReplicaID: o.replicaID, Go: b.goTracked, Sweeps: func() bool { return b.owns(flowSweepDuty) }, Options: flowOpts})
	if err := b.notices.Init(ctx); err != nil {
		cancel()
		return nil, err
	}
	if err := b.loadAll(ctx); err != nil {
		cancel()
		return nil, err
	}
	schedCtx, stopScheduler := context.WithCancel(bctx)
	b.stopScheduler = stopScheduler
	b.joinDuties(ctx, schedCtx)
	b.startDetector(schedCtx)
	b.startRediscovery(schedCtx)
	b.flows.Start(schedCtx)
	b.wg.Add(2)
	go func() {
		defer b.wg.Done()
		b.runScheduler(schedCtx)
	}()
	go func() {
		defer b.wg.Done()
		b.notices.Follow(schedCtx, b.applyRemoteNotice)
	}()
	return b, nil
}

// Close stops the scheduler, cancels refreshes in flight and waits for them.
// Rotated tokens are always stored before a refresh reports success, so a
// cancelled refresh loses nothing that was acknowledged.
func (b *Broker) Close() error {
	b.lifeMu.Lock()
	already := b.closed.Swap(true)
	b.lifeMu.Unlock()
	if already {
		return nil
	}
	// No new work starts now. Let refreshes in flight finish — a rotation
	// cut off between the provider's answer and the store write is a lost
	// family — but bound the wait.
	b.stopScheduler()
	done := make(chan struct{})
	go func() {
		b.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(b.opts.closeGrace):
		b.log.Warn("refreshes still running at shutdown; cancelling them", "waited", b.opts.closeGrace)
		b.cancel()
		<-done
	}
	b.cancel()
	b.storeHeldRotations()
	b.notices.Close()
	return nil
}

// storeHeldRotations makes a last attempt to store rotated families that
// only exist in memory, and says loudly which are lost with the process.
func (b *Broker) storeHeldRotations() {
	for _, e := range b.snapshotEntries() {
		if e.rescue.Load() == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), persistTimeout)
		_, err := b.storeRescue(ctx, e)
		cancel()
		if err != nil {
			b.log.Error("SHUTTING DOWN WITH A ROTATED REFRESH TOKEN NOT STORED: the family will need reauthentication", "credential", e.id, "err", err)
		}
	}
}

// entry is the in-memory state of one credential.
type entry struct {
	id string
	// view is what the hot path reads: the last stored state of the
	// credential, replaced as a whole after every stored change.
	view atomic.Pointer[view]
	// used is set when an access token is handed out and cleared by a
	// refresh: only tokens somebody uses are refreshed ahead of expiry.
	used atomic.Bool

	mu     sync.Mutex
	flight *flight
	// lastRejection is when a rejected-token report last caused a refresh;
	// lastProbe when one last made the broker ask the provider.
	lastRejection, lastProbe time.Time
	// rescue holds a rotated family whose write to the store failed: the
	// newest refresh token exists only here until a write succeeds.
	rescue atomic.Pointer[rescued]
	// lastErr is the last refresh failure, for describing.
	lastErr error
	// retryAt holds back scheduled refreshes after a failure.
	retryAt time.Time
	// credReadAt is when the credential record was last read (unix ns).
	credReadAt atomic.Int64
	// inactiveReadAt is when a revoked or missing family was last re-read
	// (unix ns), see recheckInactive.
	inactiveReadAt atomic.Int64
	// presenting is the generation + 1 whose refresh token this replica is
	// presenting at a provider that kills the previous access token; 0
	// when none (see cutoff.go).
	presenting atomic.Uint64
}

// view is an immutable snapshot of a credential. Never modify one in place.
type view struct {
	cred          *credentialRecord
	fam           *familyRecord
	famVersion    uint64
	credVersion   uint64
	nextRefreshAt time.Time
}

// flight is one refresh that any number of callers wait for.
type flight struct {
	done chan struct{}
	v    *view
	err  error
}

func (b *Broker) validateID(id string) error {
	if err := credid.Validate(id); err != nil {
		return &InvalidArgumentError{Field: "credential_id", Reason: err.Error()}
	}
	return nil
}

// loadAll reads every credential into memory.
func (b *Broker) loadAll(ctx context.Context) error {
	keys, err := b.store.List(ctx, credentialsPrefix)
	if err != nil {
		return fmt.Errorf("broker: load credentials: %w", err)
	}
	for _, k := range keys {
		id := k[len(credentialsPrefix):]
		e, err := b.load(ctx, id)
		if err != nil {
			return fmt.Errorf("broker: load credential %s: %w", id, err)
		}
		// A claim that cannot fit in the grace period would lose families
		// the grace period is there to save: refuse to start rather than
		// find out at the first crash.
		if err := b.opts.checkReuseGrace(e.view.Load().cred.Spec); err != nil {
			return fmt.Errorf("broker: credential %s: %w (with a shorter claim margin, update the credential)", id, err)
		}
	}
	return nil
}

// load reads a credential from the store and installs it as an entry.
func (b *Broker) load(ctx context.Context, id string) (*entry, error) {
	v, err := b.readView(ctx, id)
	if err != nil {
		return nil, err
	}
	b.entriesMu.Lock()
	defer b.entriesMu.Unlock()
	e, ok := b.entries[id]
	if !ok {
		e = &entry{id: id}
		b.entries[id] = e
	}
	if cur := e.view.Load(); cur == nil || cur.famVersion < v.famVersion || cur.credVersion < v.credVersion {
		e.view.Store(v)
	}
	return e, nil
}

func (b *Broker) readView(ctx context.Context, id string) (*view, error) {
	cred, credVersion, err := b.readCredential(ctx, id)
	if err != nil {
		return nil, err
	}
	fam := &familyRecord{Format: recordFormat, Status: StatusAwaitingReauth}
	var famVersion uint64
	famRec, err := b.store.Get(ctx, familyKey(cred))
	switch {
	case err == nil:
		if err := decodeRecord(famRec.Value, fam, &fam.Format); err != nil {
			return nil, err
		}
		famVersion = famRec.Version
	case errors.Is(err, store.ErrNotFound):
	default:
		return nil, storeUnavailable(err)
	}
	return b.newView(cred, credVersion, fam, famVersion), nil
}

func (b *Broker) readCredential(ctx context.Context, id string) (*credentialRecord, uint64, error) {
	credRec, err := b.store.Get(ctx, credentialKey(id))
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, 0, fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		return nil, 0, storeUnavailable(err)
	}
	var cred credentialRecord
	if err := decodeRecord(credRec.Value, &cred, &cred.Format); err != nil {
		return nil, 0, err
	}
	return &cred, credRec.Version, nil
}

func (b *Broker) newView(cred *credentialRecord, credVersion uint64, fam *familyRecord, famVersion uint64) *view {
	v := &view{cred: cred, credVersion: credVersion, fam: fam, famVersion: famVersion}
	v.nextRefreshAt = b.nextRefresh(v)
	return v
}

// entry returns the in-memory entry for id, loading it on first use.
func (b *Broker) entry(ctx context.Context, id string) (*entry, error) {
	b.entriesMu.RLock()
	e, ok := b.entries[id]
	b.entriesMu.RUnlock()
	if ok {
		return e, nil
	}
	return b.load(ctx, id)
}

func (b *Broker) dropEntry(id string) {
	b.entriesMu.Lock()
	delete(b.entries, id)
	b.entriesMu.Unlock()
}

func (b *Broker) snapshotEntries() []*entry {
	b.entriesMu.Lock()
	defer b.entriesMu.Unlock()
	out := make([]*entry, 0, len(b.entries))
	for _, e := range b.entries {
		out = append(out, e)
	}
	return out
}

func storeUnavailable(err error) error { return brokererr.StoreUnavailable(err) }

func (b *Broker) audit(ctx context.Context, e audit.Event) {
	e.Time = b.opts.now().UTC()
	e.Actor = audit.Actor(ctx)
	if err := b.auditor.Record(ctx, e); err != nil {
		b.log.ErrorContext(ctx, "audit record not written", "action", e.Action, "credential", e.Credential, "err", err)
	}
}

// goTracked runs f in a goroutine the broker waits for on Close. It reports
// false, running nothing, once the broker is closed.
func (b *Broker) goTracked(f func()) bool {
	b.lifeMu.Lock()
	defer b.lifeMu.Unlock()
	if b.closed.Load() {
		return false
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		f()
	}()
	return true
}

// ErrNotReady: this replica has not reached its store lately.
var ErrNotReady = errors.New("broker: store not reached lately")

// Ready reports whether this replica reaches its store: the notice log's
// follower reads it every poll interval, so a replica that has not read it
// for several intervals cannot rotate, record or announce anything. A
// provider outage does not make a replica unready: cached tokens are still
// served, and every replica would be taken out of its load balancer alike.
func (b *Broker) Ready() error {
	if b.closed.Load() {
		return fmt.Errorf("%w: shutting down", ErrNotReady)
	}
	window := max(3*b.opts.notice.Poll, 5*time.Second)
	last := b.notices.LastRead()
	if since := time.Since(last); since > window {
		return fmt.Errorf("%w: last read %s ago (more than %s)", ErrNotReady, since.Round(time.Second), window)
	}
	return nil
}

// WithDiscoveryInterval sets how often each replica fetches the metadata of
// the issuers its credentials name again (default 1h; 0 turns the refetch
// off, leaving the documents fetched at creation). One fetch per issuer per
// pass; the store is written only for a changed document.
func WithDiscoveryInterval(d time.Duration) Option {
	return func(o *options) error {
		if d != 0 && (d < 10*time.Millisecond || d > 7*24*time.Hour) {
			return fmt.Errorf("broker: discovery interval %s out of range: 0 (off) or [10ms, 168h]", d)
		}
		o.discoveryInterval = d
		return nil
	}
}
