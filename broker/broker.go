// Package broker is Rotavault's rotation logic: it owns each credential's
// refresh token, hands out access tokens, makes sure one refresh runs per
// rotation however many callers wait, stores every rotated refresh token
// before anyone sees the access token that came with it, and turns the
// provider's verdicts into family revocations and notices.
//
// It knows nothing of gRPC. It depends on small interfaces: a versioned store
// (store.Store), an OAuth provider client and an audit sink. This package
// is the rotation core (updateFamily, the claim, the refresh, revocation,
// reauthentication, serving access tokens); its parts reach it through
// small interfaces: registry, notice, authflow, catalog, detect, discovery,
// internal/schedule, internal/life, and the pure family (records, states,
// transitions, decisions), credspec, pacing, option, stats, access, spans,
// brokererr.
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
	"github.com/rotavault/rotavault/broker/authflow"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/catalog"
	"github.com/rotavault/rotavault/broker/discovery"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/internal/bgload"
	"github.com/rotavault/rotavault/broker/internal/lease"
	"github.com/rotavault/rotavault/broker/internal/life"
	"github.com/rotavault/rotavault/broker/internal/schedule"
	"github.com/rotavault/rotavault/broker/notice"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/broker/pacing"
	"github.com/rotavault/rotavault/broker/registry"
	"github.com/rotavault/rotavault/broker/stats"
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

// Broker is the rotation logic. Safe for concurrent use. Create it with New,
// stop it with Close.
type Broker struct {
	store    store.Store
	provider Provider
	auditor  Auditor
	opts     option.Options
	log      *slog.Logger

	// life owns the broker's goroutines (package life); ctx is its
	// Context, which bounds the work the broker owns (refreshes).
	life *life.Group
	ctx  context.Context

	// entriesMu guards the map only; the hot path takes it for reading.
	entriesMu sync.RWMutex
	entries   map[string]*entry
	wakes     schedule.Wakes[*entry] // every entry's (entry.wake)
	// loader loads the stored credentials in the background (loader.go).
	loader *bgload.Loader[*entry]

	notices *notice.Log
	// flows runs the authorization flows: device-flow pollers and the flow
	// sweeper (package authflow).
	flows *authflow.Flows
	// catalog is the consumer catalog (package catalog).
	catalog *catalog.Catalog
	// creds administers the credentials (package registry).
	creds *registry.Credentials
	// discovery fetches issuers' metadata (package discovery).
	discovery *discovery.Discovery
	// duties says which shared duties this replica does (duties.go).
	duties  dutyShards
	metrics stats.Counters
}

// Stats returns the broker's counters.
func (b *Broker) Stats() stats.Stats {
	s := b.metrics.Snapshot(b.catalog.Stats(), b.notices.LastRead())
	s.Duties = b.duties.Stats()
	s.Loading = b.loader.Stats()
	return s
}

// New returns a broker and starts its scheduler. It reads the notice log,
// so store trouble fails here; credentials load in the background.
func New(ctx context.Context, cfg Config, opts ...option.Option) (*Broker, error) {
	if cfg.Store == nil || cfg.Provider == nil || cfg.Auditor == nil {
		return nil, errors.New("broker: Config needs Store, Provider and Auditor")
	}
	o := option.Defaults()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	lg := life.New(ctx)
	b := &Broker{
		store:    cfg.Store,
		provider: cfg.Provider,
		auditor:  cfg.Auditor,
		opts:     o,
		log:      o.Logger,
		life:     lg,
		ctx:      lg.Context(),
		entries:  make(map[string]*entry),
		duties:   lease.All{}, // until joinDuties
	}
	b.notices = notice.New(b.store, o.Notice, o.Now, b.log)
	b.discovery = discovery.New(b.provider, o.Now, &b.metrics, b.log)
	b.catalog = catalog.New(catalog.Config{Store: b.store, Credentials: registry.Incarnations{Store: b.store}, Logger: b.log,
		Shared: !o.ExclusiveStore && o.DutyLeasePeriod != 0, OwnsShard: func(i int) bool { return b.duties.OwnsShard(i) }})
	b.creds = b.newRegistry()
	flowOpts := o.Flow
	flowOpts.RetryBase = o.Refresh.RetryBase
	b.flows = authflow.New(authflow.Config{Store: b.store, Provider: b.provider, Core: flowCore{b}, Now: o.Now, Logger: b.log,
		ReplicaID: o.ReplicaID, Go: b.goTracked, Sweeps: func() bool { return b.owns(flowSweepDuty) }, Options: flowOpts})
	if err := b.notices.Init(ctx); err != nil {
		lg.Close(0, func() {})
		return nil, err
	}
	loops := lg.Loops()
	b.loader = b.newLoader() // serve at once, load in the background
	b.goTracked(func() { b.loader.Run(loops) })
	b.joinDuties(ctx, loops)
	b.startDetector(loops)
	b.startRediscovery(loops)
	b.flows.Start(loops)
	b.goTracked(func() { b.runScheduler(loops) })
	b.goTracked(func() { b.notices.Follow(loops, b.applyRemoteNotice) })
	return b, nil
}

// Close stops the scheduler, cancels refreshes in flight and waits for them.
// Rotated tokens are always stored before a refresh reports success, so a
// cancelled refresh loses nothing that was acknowledged.
func (b *Broker) Close() error {
	// No new work starts now. Let refreshes in flight finish — a rotation
	// cut off between the provider's answer and the store write is a lost
	// family — but bound the wait.
	if !b.life.Close(b.opts.CloseGrace, func() {
		b.log.Warn("refreshes still running at shutdown; cancelling them", "waited", b.opts.CloseGrace)
	}) {
		return nil
	}
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
	// rejections paces rejected-token reports (access.go).
	rejections pacing.Rejections
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
	wakes      *schedule.Wakes[*entry] // the broker's (scheduler.go)
}

// view is an immutable snapshot of a credential. Never modify one in place.
type view struct {
	cred          *family.Credential
	fam           *family.Record
	famVersion    uint64
	credVersion   uint64
	nextRefreshAt time.Time
}

// generation is v's family generation for a span, -1 without one.
func (v *view) generation() int64 {
	if v == nil || v.fam == nil {
		return -1
	}
	return int64(v.fam.Generation)
}

// flight is one refresh that any number of callers wait for.
type flight struct {
	done chan struct{}
	v    *view
	err  error
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
		e = &entry{id: id, wakes: &b.wakes}
		b.entries[id] = e
	}
	if cur := e.view.Load(); cur == nil || cur.famVersion < v.famVersion || cur.credVersion < v.credVersion {
		e.view.Store(v)
		e.wake()
	}
	return e, nil
}

func (b *Broker) readView(ctx context.Context, id string) (*view, error) {
	cred, credVersion, err := registry.ReadCredential(ctx, b.store, id)
	if err != nil {
		return nil, err
	}
	fam := &family.Record{Format: recordFormat, Status: family.StatusAwaitingReauth}
	var famVersion uint64
	famRec, err := b.store.Get(ctx, cred.FamilyKey())
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

func (b *Broker) newView(cred *family.Credential, credVersion uint64, fam *family.Record, famVersion uint64) *view {
	v := &view{cred: cred, credVersion: credVersion, fam: fam, famVersion: famVersion}
	v.nextRefreshAt = b.timing(v).NextRefresh()
	return v
}

// entry returns the in-memory entry for id, loading it once on first use.
func (b *Broker) entry(ctx context.Context, id string) (*entry, error) {
	return b.loader.Get(ctx, id)
}

func (b *Broker) dropEntry(id string) {
	b.entriesMu.Lock()
	e := b.entries[id]
	delete(b.entries, id)
	b.entriesMu.Unlock()
	if e != nil {
		e.wake() // the next tick forgets it instead of keeping it until its timer
	}
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

func (b *Broker) audit(ctx context.Context, e audit.Event) { b.auditing(ctx, e)() }

// auditing places e in the audit trail now and returns the wait for it to
// be durable; an auditor that can (Start, as *audit.FileLog) writes it
// beside the caller's work meanwhile.
func (b *Broker) auditing(ctx context.Context, e audit.Event) (wait func()) {
	e.Time = b.opts.Now().UTC()
	e.Actor = audit.Actor(ctx)
	var wrote func() error
	if s, ok := b.auditor.(interface {
		Start(context.Context, audit.Event) func() error
	}); ok {
		wrote = s.Start(ctx, e)
	} else {
		err := b.auditor.Record(ctx, e)
		wrote = func() error { return err }
	}
	return func() {
		if err := wrote(); err != nil {
			b.log.ErrorContext(ctx, "audit record not written", "action", e.Action, "credential", e.Credential, "err", err)
		}
	}
}

// goTracked runs f in a goroutine the broker waits for on Close. It reports
// false, running nothing, once the broker is closed.
func (b *Broker) goTracked(f func()) bool { return b.life.Go(f) }

// ErrNotReady: this replica has not reached its store lately.
var ErrNotReady = errors.New("broker: store not reached lately")

// Ready reports whether this replica reaches its store, as the notice
// log's follower finds (notice.Log.Unread). A provider outage does not
// make a replica unready: cached tokens are still served, and every
// replica would be taken out of its load balancer alike.
func (b *Broker) Ready() error {
	if b.life.Closed() {
		return fmt.Errorf("%w: shutting down", ErrNotReady)
	}
	if err := b.notices.Unread(); err != nil {
		return fmt.Errorf("%w: %w", ErrNotReady, err)
	}
	return nil
}
