// Package authflow runs the authorization flows that give a credential a
// new token family: authorization code with PKCE (answered by the caller or
// by the server's own callback) and device authorization. Flows live in
// the store, so any replica answers for them; the rotation core installs
// the family a flow brings (Core). Package broker re-exports the names its
// callers use.
package authflow

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/internal/jsonrec"
	"github.com/rotavault/rotavault/internal/ctxwait"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store"
)

// Pending reauthentication flows live in the store under flows/<state>, so
// that any replica can answer for them: the provider's redirect may land on
// another replica than the one that started the flow, an operator's
// AuthorizationCheck may reach a third, and a device flow's poller that
// dies is taken over. A flow is bound to its credential (and the
// credential's incarnation), single use (its code is consumed with
// check-and-set) and expiring. Finished flows keep their outcome for
// Retention so that a late check still learns it, then a sweep deletes
// them.
//
// A device flow is polled by one replica at a time: the holder of its lease
// (poller, lease_until), taken and renewed with check-and-set. The holder's
// provider calls end a third of the lease before the lease does, as refresh
// claims do (broker/claim.go): two replicas poll the same device code only if a
// process pause plus clock skew exceeds that margin, and even then the
// provider redeems an approved device code once, so at most one family is
// installed. A replica that stops releases its leases; one that dies leaves
// them to expire, and the next sweep takes the poll over: one replica of
// those sharing the store sweeps (Config.Sweeps), and when it is the one
// that died, another takes the sweep over within a duty lease period.

// FlowKind says how a pending flow reaches the user.
type FlowKind string

const (
	// FlowAuthorizationCode is an authorization-code flow with PKCE.
	FlowAuthorizationCode FlowKind = "authorization_code"
	// FlowDevice is a device authorization flow (Salesforce's or RFC 8628).
	FlowDevice FlowKind = "device"
)

type Status string

const (
	// StatusPending is also the status of records written before statuses
	// existed (empty).
	StatusPending   Status = "pending"
	StatusCompleted Status = "completed"
	StatusFailed    Status = "failed"
)

// FlowFailure says why a flow ended without a new family.
type FlowFailure string

const (
	// FlowDenied: the user refused at the provider.
	FlowDenied FlowFailure = "denied"
	// FlowExpired: the flow ran out of time, or the provider no longer
	// accepted its device code.
	FlowExpired FlowFailure = "expired"
	// FlowRefused: the provider refused the grant, or its grant carried no
	// refresh token.
	FlowRefused FlowFailure = "failed"
)

const (
	// Retention is how long a finished (or expired) flow's outcome is
	// kept for AuthorizationCheck before a sweep deletes it.
	Retention = 10 * time.Minute
	// exchangeGrace keeps a sweep from expiring an authorization-code flow
	// whose code a replica is exchanging right at the deadline: the
	// exchange's outcome, not the clock, decides.
	exchangeGrace = 2 * time.Minute
	// defaultDeviceInterval is RFC 8628's interval when the provider names
	// none; slowDownStep is what slow_down adds (RFC 8628 §3.5).
	defaultDeviceInterval = 5 * time.Second
	slowDownStep          = 5 * time.Second
	minDeviceInterval     = time.Second
	maxDeviceInterval     = 5 * time.Minute
	// defaultDeviceLifetime applies when the provider gives no expiry
	// (Salesforce does not); maxDeviceLifetime caps what a provider asks.
	defaultDeviceLifetime = 10 * time.Minute
	maxDeviceLifetime     = time.Hour
	// maxDevicePoll bounds one poll of the token endpoint.
	maxDevicePoll = 30 * time.Second
	// MaxCheckWait is the longest AuthorizationCheck wait.
	MaxCheckWait = 60 * time.Second
	// checkPoll is how often a waiting AuthorizationCheck re-reads the flow
	// for outcomes written by other replicas (this replica's own outcomes
	// wake it at once): one store read per interval per waiting check.
	checkPoll = 500 * time.Millisecond
	// checkAnswerMargin is kept before the caller's deadline, so a wait
	// ends with an answer rather than DEADLINE_EXCEEDED.
	checkAnswerMargin = time.Second
	// flowWriteTries bounds read-modify-write loops on a flow record.
	flowWriteTries = 16
)

// Defaults of WithFlowTiming.
const (
	DefaultFlowSweepInterval = 10 * time.Second
	DefaultDeviceLease       = 30 * time.Second
)

// Options tune the flows; zero values mean the defaults.
type Options struct {
	// Lifetime is how long an authorization-code flow may take.
	Lifetime time.Duration
	// MaxFlows bounds the flows the store holds at once (MaxPendingFlows
	// when zero).
	MaxFlows int
	// SweepInterval is how often a replica sweeps the flows
	// (DefaultFlowSweepInterval); Lease is a device flow's poll lease
	// (DefaultDeviceLease, at least three polling intervals).
	SweepInterval, Lease time.Duration
	// CallbackURL is the server's own OAuth callback; empty for none.
	CallbackURL string
	// RetryBase is the first wait between attempts to store the family of
	// an approved device grant; it doubles with each attempt.
	RetryBase time.Duration
}

func (o Options) sweep() time.Duration {
	if o.SweepInterval > 0 {
		return o.SweepInterval
	}
	return DefaultFlowSweepInterval
}

// leaseFor is a device flow's lease: long enough for three polls, so a live
// poller renews it every other poll at most.
func (o Options) leaseFor(interval time.Duration) time.Duration {
	lease := o.Lease
	if lease <= 0 {
		lease = DefaultDeviceLease
	}
	return max(lease, 3*interval)
}

// Core is what the flows need of the rotation core.
type Core interface {
	// ValidateID refuses a malformed credential id
	// (*brokererr.InvalidArgumentError).
	ValidateID(id string) error
	// ValidateEndpointURL refuses a URL the provider may not be sent to.
	ValidateEndpointURL(raw string) error
	// Credential returns credential id as this replica last saw it, or,
	// with stored, as the store holds it now. Errors: brokererr.ErrNotFound,
	// *brokererr.UnavailableError.
	Credential(ctx context.Context, id string, stored bool) (Credential, error)
	// Install stores the family of an approved grant into the credential's
	// incarnation (brokererr.ErrNotFound when it is gone), revoking the
	// family it replaces at the provider, and announces it.
	Install(ctx context.Context, id, incarnation string, tok *provider.Token) (Activation, error)
}

// Credential is what a flow needs of its credential.
type Credential struct {
	ID, Incarnation string
	// Generic: a generic OAuth 2.0 provider (not Salesforce).
	Generic bool
	// Scopes are the credential's configured scopes.
	Scopes   []string
	Endpoint provider.Endpoint
	Client   provider.ClientCredentials
	// ResolveScopes returns a flow's scopes (the credential's unless
	// requested), refusing those that cannot yield a rotatable grant.
	ResolveScopes func(requested []string) ([]string, error)
}

// Provider is what the flows need of the provider client.
type Provider interface {
	AuthCodeURL(ep provider.Endpoint, cc provider.ClientCredentials, redirectURI, state, codeChallenge string, scopes []string) (string, error)
	ExchangeCode(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, code, redirectURI, codeVerifier string) (*provider.Token, error)
	StartDeviceAuthorization(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, scopes []string) (*provider.DeviceAuthorization, error)
	PollDeviceToken(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, deviceCode string) (*provider.Token, error)
	Revoke(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, token string) error
}

// Config holds the flows' dependencies.
type Config struct {
	Store    store.Store
	Provider Provider
	Core     Core
	Now      func() time.Time
	Logger   *slog.Logger
	// ReplicaID names this replica as a device flow's poller.
	ReplicaID string
	// Go runs f in a goroutine its owner waits for at shutdown, and
	// reports false, running nothing, once the owner is closed.
	Go func(f func()) bool
	// Sweeps reports whether this replica sweeps now: one replica of
	// those sharing the store does (the holder of the sweep's duty lease).
	// Nil: always.
	Sweeps  func() bool
	Options Options
}

// Flows runs the authorization flows (code, device, callback) of every
// credential. Safe for concurrent use; Start it once.
type Flows struct {
	store     store.Store
	provider  Provider
	core      Core
	now       func() time.Time
	log       *slog.Logger
	replicaID string
	goTracked func(f func()) bool
	sweeps    func() bool
	opts      Options
	runner    flowRunner
}

// New returns the flows of cfg; Start runs their sweeper.
func New(cfg Config) *Flows {
	o := cfg.Options
	if o.MaxFlows == 0 {
		o.MaxFlows = MaxPendingFlows
	}
	return &Flows{store: cfg.Store, provider: cfg.Provider, core: cfg.Core, now: cfg.Now, log: cfg.Logger,
		replicaID: cfg.ReplicaID, goTracked: cfg.Go, sweeps: cfg.Sweeps, opts: o}
}

// Record is a reauthentication flow. The verifier and the device code
// are secrets: stores encrypt records.
type Record struct {
	Format int `json:"format"`
	// Kind is empty in records written before device flows existed.
	Kind         FlowKind  `json:"kind,omitempty"`
	CredentialID string    `json:"credential_id"`
	Incarnation  string    `json:"incarnation,omitempty"`
	Scopes       []string  `json:"scopes,omitempty"`
	StartedAt    time.Time `json:"started_at,omitzero"`
	ExpiresAt    time.Time `json:"expires_at"`
	Status       Status    `json:"status,omitempty"`
	// Actor started the flow; the family it installs is audited in their
	// name when no caller is at hand (a device poll, a browser redirect).
	Actor string `json:"actor,omitempty"`

	// Authorization code.
	Verifier     string `json:"verifier,omitempty"`
	RedirectURI  string `json:"redirect_uri,omitempty"`
	AuthorizeURL string `json:"authorize_url,omitempty"`
	// ServerCallback: the redirect URI is the server's own callback, which
	// completes the flow.
	ServerCallback bool `json:"server_callback,omitempty"`
	// Consumed is set, with check-and-set, by whoever exchanges the code:
	// one code completes a flow once.
	Consumed   bool      `json:"consumed,omitempty"`
	ConsumedAt time.Time `json:"consumed_at,omitzero"`

	// Device.
	DeviceCode              string        `json:"device_code,omitempty"`
	UserCode                string        `json:"user_code,omitempty"`
	VerificationURI         string        `json:"verification_uri,omitempty"`
	VerificationURIComplete string        `json:"verification_uri_complete,omitempty"`
	Interval                time.Duration `json:"interval,omitempty"`
	Poller                  string        `json:"poller,omitempty"`
	LeaseUntil              time.Time     `json:"lease_until,omitzero"`

	// Outcome.
	FamilyID      string      `json:"family_id,omitempty"`
	Generation    uint64      `json:"generation,omitempty"`
	ActivatedAt   time.Time   `json:"activated_at,omitzero"`
	Failure       FlowFailure `json:"failure,omitempty"`
	FailureDetail string      `json:"failure_detail,omitempty"`
	FinishedAt    time.Time   `json:"finished_at,omitzero"`
}

func (f *Record) kind() FlowKind {
	if f.Kind == "" {
		return FlowAuthorizationCode
	}
	return f.Kind
}

// Pending reports whether the flow has not ended yet.
func (f *Record) Pending() bool { return f.Status == "" || f.Status == StatusPending }

// finish records an outcome and drops what only a pending flow needs: the
// verifier and the device code are useless from now on, and a record kept
// for Retention should not hold them.
func (f *Record) finish(now time.Time, status Status) {
	f.Status, f.FinishedAt = status, now
	f.Verifier, f.DeviceCode = "", ""
	f.Poller, f.LeaseUntil = "", time.Time{}
}

func (f *Record) fail(now time.Time, reason FlowFailure, detail string) {
	f.finish(now, StatusFailed)
	f.Failure, f.FailureDetail = reason, detail
}

func (f *Record) complete(now time.Time, act Activation) {
	f.finish(now, StatusCompleted)
	f.Failure, f.FailureDetail = "", ""
	f.FamilyID, f.Generation, f.ActivatedAt = act.FamilyID, act.Generation, act.ActivatedAt
}

// AuthorizationError reports a flow that ended without a new family. Nothing
// was changed; start a new flow.
type AuthorizationError struct {
	Reason FlowFailure
	// Detail explains it for people; it never holds a code or token.
	Detail string
}

func (e *AuthorizationError) Error() string {
	return fmt.Sprintf("broker: authorization %s: %s", e.Reason, e.Detail)
}

// ErrCallbackNotConfigured: an authorization-code flow asked for the
// server's own callback, and the server has no public URL.
var ErrCallbackNotConfigured = errors.New("broker: no callback URL configured (set the server's public URL), or pass a redirect URI")

// ErrTooManyFlows: a new flow would exceed one of the flow bounds: the
// store-wide MaxPendingFlows (pending, or finished within the last ten
// minutes), MaxPendingFlowsPerCredential or MaxPendingFlowsPerActor.
var ErrTooManyFlows = errors.New("broker: too many authorization flows in progress")

// Flow bounds. Each flow is a store record the sweep reads,
// and a device flow also a poller: the store holds at most MaxPendingFlows
// (WithMaxFlows), and within that, shares keep one credential or one
// operator from taking every place for the flow lifetime.
const (
	MaxPendingFlows              = 1000
	MaxPendingFlowsPerCredential = 10
	MaxPendingFlowsPerActor      = 100
)

const (
	// flowLedgerKey holds the ledger of flows, the one record every
	// reservation writes with check-and-set: that is what makes the
	// bounds exact across replicas.
	flowLedgerKey = "flowledger"
	// ReserveGrace is how long a reserved flow may go without its record
	// before a sweep drops the reservation: starting a device flow waits
	// for the provider (at most maxDevicePoll) between the two.
	ReserveGrace = 2 * time.Minute
)

// flowLedger lists the flows the store holds or is about to hold. Entries
// are keyed by a hash of the flow's state (the state is a capability; its
// record's key already names it, the ledger need not).
type flowLedger struct {
	Flows map[string]ledgerEntry `json:"flows"`
}

type ledgerEntry struct {
	CredentialID string `json:"credential_id"`
	// Actor is a hash of the identity that started the flow.
	Actor      string    `json:"actor"`
	ReservedAt time.Time `json:"reserved_at"`
	// Finished: the flow no longer counts against its credential's and
	// its actor's shares, only against the store-wide bound until its
	// record is deleted.
	Finished bool `json:"finished,omitempty"`
}

func ledgerID(state string) string {
	sum := sha256.Sum256([]byte("flow\x00" + state))
	return hex.EncodeToString(sum[:16])
}

func actorID(actor string) string {
	sum := sha256.Sum256([]byte("actor\x00" + actor))
	return hex.EncodeToString(sum[:16])
}

// reserveFlow takes a place for a new flow of credentialID started by
// ctx's actor, within every bound, and returns the flow's state. The
// ledger is written with check-and-set, so concurrent starts on every
// replica together never exceed a bound. Errors: ErrTooManyFlows,
// *brokererr.UnavailableError, brokererr.ErrConflict.
func (fl *Flows) reserveFlow(ctx context.Context, credentialID string) (string, error) {
	// One reservation at a time on this replica: concurrent local starts
	// would only lose check-and-set races to each other.
	fl.runner.reserveMu.Lock()
	defer fl.runner.reserveMu.Unlock()
	state := randomToken(32)
	actor := actorID(audit.Actor(ctx))
	var refusal error
	err := fl.updateLedger(ctx, func(l *flowLedger) bool {
		var perCredential, perActor int
		for _, e := range l.Flows {
			if e.Finished {
				continue
			}
			if e.CredentialID == credentialID {
				perCredential++
			}
			if e.Actor == actor {
				perActor++
			}
		}
		switch {
		case len(l.Flows) >= fl.opts.MaxFlows:
			refusal = fmt.Errorf("%w: the store holds %d (finished flows are forgotten after 10 minutes)", ErrTooManyFlows, len(l.Flows))
		case perCredential >= MaxPendingFlowsPerCredential:
			refusal = fmt.Errorf("%w: %d pending for credential %s", ErrTooManyFlows, perCredential, credentialID)
		case perActor >= MaxPendingFlowsPerActor:
			refusal = fmt.Errorf("%w: %d pending started by this caller", ErrTooManyFlows, perActor)
		default:
			refusal = nil
			l.Flows[ledgerID(state)] = ledgerEntry{CredentialID: credentialID, Actor: actor, ReservedAt: fl.now()}
			return true
		}
		return false
	})
	if err != nil {
		return "", err
	}
	if refusal != nil {
		fl.log.WarnContext(ctx, "refusing a new authorization flow", "credential", credentialID, "err", refusal)
		return "", refusal
	}
	fl.runner.ledgerDirty.Store(true)
	return state, nil
}

// ledgerWriteTries bounds the ledger's read-modify-write loop. The ledger is
// one record every replica's starts and the sweep write: a replica reserving
// places back to back can win every race against another one retrying at
// once (seen under CPU load), so a loser backs off, with jitter, before it
// reads again (ledgerBackoff), and gets more tries than a flow record's.
const ledgerWriteTries = 64

// ledgerBackoff is how long a writer that lost race number attempt waits:
// a random time up to 1 ms << attempt, at most 50 ms.
func ledgerBackoff(attempt int) time.Duration {
	ceiling := min(time.Millisecond<<min(attempt, 6), 50*time.Millisecond)
	return rand.N(ceiling) + time.Millisecond/4
}

// updateLedger is the ledger's read → mutate → check-and-set loop.
func (fl *Flows) updateLedger(ctx context.Context, mutate func(*flowLedger) bool) error {
	for attempt := range ledgerWriteTries {
		if attempt > 0 {
			if err := ctxwait.Sleep(ctx, ledgerBackoff(attempt)); err != nil {
				return err
			}
		}
		l := &flowLedger{}
		var version uint64
		rec, err := fl.store.Get(ctx, flowLedgerKey)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return brokererr.StoreUnavailable(err)
		default:
			if err := json.Unmarshal(rec.Value, l); err != nil {
				return fmt.Errorf("broker: flow ledger: %w", err)
			}
			version = rec.Version
		}
		if l.Flows == nil {
			l.Flows = make(map[string]ledgerEntry)
		}
		if !mutate(l) {
			return nil
		}
		data, err := json.Marshal(l)
		if err != nil {
			return fmt.Errorf("broker: flow ledger: %w", err)
		}
		_, err = fl.store.Put(ctx, flowLedgerKey, data, version)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return brokererr.StoreUnavailable(err)
		}
		return nil
	}
	return fmt.Errorf("%w: the flow ledger kept changing", brokererr.ErrConflict)
}

// reconcileLedger brings the ledger in line with the flow records a sweep
// found (by ledger id: whether each is pending): a finished flow leaves its
// shares, a deleted one the ledger; a reservation whose record never came
// (a start that failed after reserving) is dropped after ReserveGrace.
func (fl *Flows) reconcileLedger(ctx context.Context, records map[string]bool) {
	now := fl.now()
	// An idle system's sweeps read no ledger, except once per ReserveGrace:
	// a reservation left by a replica that crashed (or was removed) before
	// writing its flow record is in no replica's memory, and nothing else
	// would ever release its place. A restarted replica checks at its
	// first sweep (the zero time).
	if len(records) == 0 && !fl.runner.ledgerDirty.Load() &&
		now.Sub(time.Unix(0, fl.runner.ledgerCheckedAt.Load())) < ReserveGrace {
		return
	}
	fl.runner.ledgerCheckedAt.Store(now.UnixNano())
	left := -1
	err := fl.updateLedger(ctx, func(l *flowLedger) bool {
		defer func() { left = len(l.Flows) }()
		changed := false
		for id, e := range l.Flows {
			pending, exists := records[id]
			switch {
			case !exists && now.Sub(e.ReservedAt) >= ReserveGrace:
				delete(l.Flows, id)
				changed = true
			case exists && !pending && !e.Finished:
				e.Finished = true
				l.Flows[id] = e
				changed = true
			}
		}
		return changed
	})
	if err != nil && ctx.Err() == nil {
		fl.log.WarnContext(ctx, "flow sweep: cannot update the flow ledger", "err", err)
	}
	if err == nil && left == 0 {
		fl.runner.ledgerDirty.Store(false)
	}
}

// Details of flow outcomes that more than one path records.
const (
	flowExpiredDetail = "the flow expired before the user completed it; start a new one"
	DeniedDetail      = "the user denied the authorization at the provider"
)

// errFlowUnknown is the answer for a state that names no usable flow: never
// issued, another credential's, expired, used or forgotten. One answer for
// all, so a caller cannot probe other credentials' flows.
func errFlowUnknown() error {
	return brokererr.Invalid("state", "unknown, expired or already used; start the flow again")
}

// flowRunner is the broker's share of flow work: the device pollers this
// replica runs and the signal that wakes waiting checks.
type flowRunner struct {
	// ctx ends when the broker closes: pollers release their leases and
	// stop, waiting checks answer.
	ctx context.Context

	// reserveMu serialises this replica's flow reservations.
	reserveMu sync.Mutex
	// ledgerDirty: this replica reserved places since its sweep last saw
	// an empty ledger, so its sweeps reconcile the ledger even when the
	// store holds no flow (a start that failed after reserving leaves an
	// entry without a record). An idle system's sweeps cost no ledger read.
	ledgerDirty atomic.Bool
	// ledgerCheckedAt is when this replica's sweep last read the ledger
	// (Unix nanoseconds of the broker's clock; 0 before the first).
	ledgerCheckedAt atomic.Int64

	mu      sync.Mutex
	polling map[string]bool
	// changed is closed and replaced whenever this replica finishes a flow.
	changed chan struct{}
	// noWait is closed by StopWaiting.
	noWait     chan struct{}
	noWaitOnce sync.Once
}

// StopWaiting makes every AuthorizationCheck waiting on this replica answer
// now, and later ones answer without waiting. Call it when a graceful
// shutdown begins, before the transport waits for calls in flight: a
// waiting check must not hold a rolling restart up to a minute; its client
// asks again, elsewhere. Safe to call more than once.
func (fl *Flows) StopWaiting() {
	fl.runner.noWaitOnce.Do(func() { close(fl.runner.noWait) })
}

// Start starts the sweeper; ctx ends when the owner closes, and with it
// the device pollers (which release their leases) and waiting checks.
func (fl *Flows) Start(ctx context.Context) {
	fl.runner.ctx = ctx
	fl.runner.polling = make(map[string]bool)
	fl.runner.changed = make(chan struct{})
	fl.runner.noWait = make(chan struct{})
	fl.goTracked(func() { fl.runFlowSweeper(ctx) })
}

func (f *flowRunner) changedCh() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

func (f *flowRunner) signal() {
	f.mu.Lock()
	defer f.mu.Unlock()
	close(f.changed)
	f.changed = make(chan struct{})
}

// claimLocal reports whether this replica may start polling state, marking
// it polled.
func (f *flowRunner) claimLocal(state string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.polling[state] {
		return false
	}
	f.polling[state] = true
	return true
}

func (f *flowRunner) dropLocal(state string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.polling, state)
}

func (f *flowRunner) isPolling(state string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.polling[state]
}

// readFlow returns the flow of state; store.ErrNotFound (wrapped) when
// there is none.
func (fl *Flows) readFlow(ctx context.Context, state string) (*Record, uint64, error) {
	return ReadRecord(ctx, fl.store, state)
}

// ReadRecord reads the flow of state from st; store.ErrNotFound (wrapped)
// when there is none.
func ReadRecord(ctx context.Context, st store.Store, state string) (*Record, uint64, error) {
	rec, err := st.Get(ctx, RecordKey(state))
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, 0, err
		}
		return nil, 0, brokererr.StoreUnavailable(err)
	}
	var f Record
	if err := jsonrec.Decode(rec.Value, &f, &f.Format); err != nil {
		return nil, 0, err
	}
	return &f, rec.Version, nil
}

// writeFlow stores a flow record with check-and-set on expected (0: create).
// Errors: store.ErrConflict (wrapped) as is, *brokererr.UnavailableError.
func (fl *Flows) writeFlow(ctx context.Context, state string, f *Record, expected uint64) (uint64, error) {
	return WriteRecord(ctx, fl.store, state, f, expected)
}

// WriteRecord stores the flow of state in st with check-and-set on
// expected (0: create). Errors: store.ErrConflict (wrapped) as is,
// *brokererr.UnavailableError.
func WriteRecord(ctx context.Context, st store.Store, state string, f *Record, expected uint64) (uint64, error) {
	f.Format = jsonrec.Format
	raw, err := jsonrec.Encode(f)
	if err != nil {
		return 0, err
	}
	v, err := st.Put(ctx, RecordKey(state), raw, expected)
	if err != nil && !errors.Is(err, store.ErrConflict) {
		return 0, brokererr.StoreUnavailable(err)
	}
	return v, err
}

// updateFlow re-reads the flow and applies mutate until a check-and-set
// write succeeds. mutate returns false to leave the record as it is.
// Errors: store.ErrNotFound, *brokererr.UnavailableError, brokererr.ErrConflict after
// flowWriteTries lost races.
func (fl *Flows) updateFlow(ctx context.Context, state string, mutate func(*Record) bool) (*Record, uint64, error) {
	for range flowWriteTries {
		f, version, err := fl.readFlow(ctx, state)
		if err != nil {
			return nil, 0, err
		}
		if !mutate(f) {
			return f, version, nil
		}
		v, err := fl.writeFlow(ctx, state, f, version)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return nil, 0, err
		}
		if !f.Pending() {
			fl.runner.signal()
		}
		return f, v, nil
	}
	return nil, 0, fmt.Errorf("%w: flow record kept changing", brokererr.ErrConflict)
}

// completeFlow records a flow's family. It overwrites an expiry a sweep
// wrote meanwhile: the family is installed, that is the truth.
func (fl *Flows) completeFlow(ctx context.Context, state string, act Activation) {
	fl.recordOutcome(ctx, state, func(f *Record) bool {
		if !f.Pending() && (f.Status != StatusFailed || f.Failure != FlowExpired) {
			return false
		}
		f.complete(fl.now(), act)
		return true
	})
}

// failFlow records why a flow ended without a family, unless it already
// ended.
func (fl *Flows) failFlow(ctx context.Context, state string, reason FlowFailure, detail string) {
	fl.recordOutcome(ctx, state, func(f *Record) bool {
		if !f.Pending() {
			return false
		}
		f.fail(fl.now(), reason, detail)
		return true
	})
}

// recordOutcome writes on a context of its own: once the provider acted, a
// cancelled caller must not leave the flow looking pending.
func (fl *Flows) recordOutcome(ctx context.Context, state string, mutate func(*Record) bool) {
	pctx, cancel := persistContext(ctx)
	defer cancel()
	if _, _, err := fl.updateFlow(pctx, state, mutate); err != nil && !errors.Is(err, store.ErrNotFound) {
		fl.log.ErrorContext(ctx, "could not record a reauthentication flow's outcome", "err", err)
	}
}

// FlowProgress is a flow's state as AuthorizationCheck reports it: exactly
// one field is set.
type FlowProgress struct {
	Authorization *PendingAuthorization
	Device        *DevicePending
	Activation    *Activation
}

// CheckAuthorization reports how the flow of state, begun for credential id,
// is doing, waiting up to wait (at most MaxCheckWait, and less than ctx's
// deadline) for it to finish. A flow that ended without a family is an
// *AuthorizationError. Errors: *brokererr.InvalidArgumentError (also for a state that
// is unknown, another credential's, or forgotten), *AuthorizationError,
// *brokererr.UnavailableError, ctx's error.
func (fl *Flows) CheckAuthorization(ctx context.Context, id, state string, wait time.Duration) (FlowProgress, error) {
	if err := fl.core.ValidateID(id); err != nil {
		return FlowProgress{}, err
	}
	if !isFlowState(state) {
		return FlowProgress{}, brokererr.Invalid("state", "malformed")
	}
	if wait < 0 || wait > MaxCheckWait {
		return FlowProgress{}, brokererr.Invalid("authorization_check.wait", "between 0 and %s", MaxCheckWait)
	}
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl)-checkAnswerMargin)
	}
	var timeout <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	poll := time.NewTicker(checkPoll)
	defer poll.Stop()
	for {
		changed := fl.runner.changedCh()
		f, version, err := fl.readFlow(ctx, state)
		if errors.Is(err, store.ErrNotFound) {
			return FlowProgress{}, errFlowUnknown()
		}
		if err != nil {
			return FlowProgress{}, err
		}
		if f.CredentialID != id {
			return FlowProgress{}, errFlowUnknown()
		}
		p, done, err := fl.progress(f, state)
		if done || wait <= 0 {
			return p, err
		}
		if f.kind() == FlowDevice && fl.now().After(f.LeaseUntil) {
			// Nobody polls it: take it over now rather than at the next
			// sweep, the operator is waiting.
			fl.takeOverDevice(ctx, state, f, version)
		}
		select {
		case <-changed:
		case <-poll.C:
		case <-timeout:
			return p, nil
		case <-fl.runner.ctx.Done():
			return p, nil
		case <-fl.runner.noWait:
			return p, nil
		case <-ctx.Done():
			return FlowProgress{}, ctx.Err()
		}
	}
}

// progress turns a record into the check's answer; done when the flow ended.
func (fl *Flows) progress(f *Record, state string) (FlowProgress, bool, error) {
	switch {
	case f.Status == StatusCompleted:
		return FlowProgress{Activation: &Activation{FamilyID: f.FamilyID, Generation: f.Generation, ActivatedAt: f.ActivatedAt}}, true, nil
	case f.Status == StatusFailed:
		return FlowProgress{}, true, &AuthorizationError{Reason: f.Failure, Detail: f.FailureDetail}
	case !fl.now().Before(f.ExpiresAt) && !(f.Consumed && fl.now().Before(f.ExpiresAt.Add(exchangeGrace))):
		return FlowProgress{}, true, &AuthorizationError{Reason: FlowExpired, Detail: flowExpiredDetail}
	case f.kind() == FlowDevice:
		return FlowProgress{Device: devicePending(state, f)}, false, nil
	default:
		return FlowProgress{Authorization: pendingAuthorization(state, f)}, false, nil
	}
}

// runFlowSweeper sweeps the flows until ctx ends.
func (fl *Flows) runFlowSweeper(ctx context.Context) {
	t := time.NewTicker(fl.opts.sweep())
	defer t.Stop()
	for {
		if fl.sweeps == nil || fl.sweeps() {
			fl.Sweep(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sweep takes over device flows nobody polls, expires pending flows
// past their deadline and deletes finished ones past Retention. It
// costs one List and one read per flow: flows are few (one per person
// reauthenticating), whatever the number of credentials.
func (fl *Flows) Sweep(ctx context.Context) {
	keys, err := fl.store.List(ctx, RecordPrefix)
	if err != nil {
		if ctx.Err() == nil {
			fl.log.WarnContext(ctx, "flow sweep: cannot list flows", "err", err)
		}
		return
	}
	// records: ledger id → pending, for every flow record still in the
	// store after this sweep (unreadable ones count as pending: the
	// ledger errs on the side of the bound).
	records := make(map[string]bool, len(keys))
	for _, key := range keys {
		if ctx.Err() != nil {
			return
		}
		state := strings.TrimPrefix(key, RecordPrefix)
		f, version, err := fl.readFlow(ctx, state)
		if err != nil {
			if !errors.Is(err, store.ErrNotFound) {
				records[ledgerID(state)] = true
				fl.log.WarnContext(ctx, "flow sweep: cannot read a flow", "err", err)
			}
			continue
		}
		records[ledgerID(state)] = f.Pending()
		now := fl.now()
		leaseLive := f.kind() == FlowDevice && f.Poller != "" && now.Before(f.LeaseUntil)
		switch {
		case !f.Pending():
			if !now.Before(f.FinishedAt.Add(Retention)) && fl.deleteFlow(ctx, state) {
				delete(records, ledgerID(state))
			}
		case !now.Before(f.ExpiresAt.Add(Retention + exchangeGrace)):
			// Pending far past its end: whoever should have finished it is
			// gone, and a check has long answered "expired".
			if fl.deleteFlow(ctx, state) {
				delete(records, ledgerID(state))
			}
		case !now.Before(f.ExpiresAt):
			if leaseLive || (f.Consumed && now.Before(f.ExpiresAt.Add(exchangeGrace))) {
				continue // its poller or exchanger will record the outcome
			}
			expired := *f
			expired.fail(now, FlowExpired, flowExpiredDetail)
			if _, err := fl.writeFlow(ctx, state, &expired, version); err == nil {
				records[ledgerID(state)] = false
				fl.runner.signal()
			}
		case f.kind() == FlowDevice && !leaseLive && !fl.runner.isPolling(state):
			fl.takeOverDevice(ctx, state, f, version)
		}
	}
	fl.reconcileLedger(ctx, records)
}

func (fl *Flows) deleteFlow(ctx context.Context, state string) bool {
	if err := fl.store.Delete(ctx, RecordKey(state)); err != nil {
		fl.log.WarnContext(ctx, "flow sweep: cannot delete a finished flow", "err", err)
		return false
	}
	return true
}

// IsFlowState reports whether s has the form of a flow's state (43
// base64url characters: 256 random bits). The OAuth callback checks it
// before anything costs a store read or a rate-limit token.
func IsFlowState(s string) bool { return isFlowState(s) }

// ScopeNotAllowed is the brokererr.InvalidArgumentError code of a flow asking for a
// scope its credential was not configured with.
const ScopeNotAllowed = "SCOPE_NOT_ALLOWED"

type scopeWideningKey struct{}

// WithScopeWidening marks ctx as a caller who may start flows asking for
// scopes beyond those the credential's admin configured: an admin, who
// could configure them anyway. The transport sets it from its policy.
func WithScopeWidening(ctx context.Context) context.Context {
	return context.WithValue(ctx, scopeWideningKey{}, true)
}

// checkRequestedScopes refuses scopes (requested for a flow, as given by
// the caller) that the credential does not list, unless ctx may widen
// them: an operator reauthenticates a credential, it does not decide what
// the token may do ("full", "admin:org"). Scope strings are compared as
// space-separated words, so "openid offline_access" covers "openid".
func checkRequestedScopes(ctx context.Context, configured, requested []string) error {
	if len(requested) == 0 || ctx.Value(scopeWideningKey{}) != nil {
		return nil
	}
	allowed := make(map[string]bool)
	for _, s := range configured {
		for _, w := range strings.Fields(s) {
			allowed[w] = true
		}
	}
	var extra []string
	for _, s := range requested {
		for _, w := range strings.Fields(s) {
			if !allowed[w] {
				extra = append(extra, w)
			}
		}
	}
	if len(extra) > 0 {
		return &brokererr.InvalidArgumentError{Field: "scopes", Code: ScopeNotAllowed,
			Reason: fmt.Sprintf("%q: not among the credential's scopes; ask an admin to add them to the credential, or to start the flow", extra)}
	}
	return nil
}

// Store keys of the flows: a record per flow under RecordPrefix.
const RecordPrefix = "flows/"

// RecordKey is where the flow of state lives.
func RecordKey(state string) string { return RecordPrefix + state }

// persistTimeout bounds the store writes that record what the provider
// already did (a spent code, an approved device grant). They run on a
// context of their own: neither the caller's deadline nor a shutdown may
// cut them off.
const persistTimeout = 30 * time.Second

func persistContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), persistTimeout)
}

// installTries bounds the attempts to store an approved device grant's
// family.
const installTries = 5

// Polling reports whether this replica polls the device flow of state.
func (fl *Flows) Polling(state string) bool { return fl.runner.isPolling(state) }

// Reserve takes a place for a new flow of credentialID within the flow
// bounds, as every start does first, and returns its state.
func (fl *Flows) Reserve(ctx context.Context, credentialID string) (string, error) {
	return fl.reserveFlow(ctx, credentialID)
}

// Fail ends the flow of state without a family, unless it already ended.
func (fl *Flows) Fail(ctx context.Context, state string, reason FlowFailure, detail string) {
	fl.failFlow(ctx, state, reason, detail)
}
