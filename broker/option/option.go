// Package option tunes a broker (broker.New): functional options that
// validate their input, applied to Options, which groups the knobs by the
// part of the broker they tune. Required dependencies are broker.Config's.
package option

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/rotavault/rotavault/broker/authflow"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/detect"
	"github.com/rotavault/rotavault/broker/internal/lease"
	"github.com/rotavault/rotavault/broker/internal/textcheck"
	"github.com/rotavault/rotavault/broker/notice"
)

// Option tunes a broker. It returns an error for a value out of range.
type Option func(*Options) error

// Options are a broker's settings, by part. The zero value is not usable:
// start from Defaults.
type Options struct {
	Logger *slog.Logger
	Now    func() time.Time
	// ReplicaID names this replica in refresh claims.
	ReplicaID string
	// ExclusiveStore: no other process uses the store (WithExclusiveStore).
	ExclusiveStore bool
	// DutyLeasePeriod: broker/duties.go; 0 turns sharing off.
	DutyLeasePeriod time.Duration
	// CloseGrace bounds how long Close waits for refreshes in flight.
	CloseGrace time.Duration

	Claim    Claim
	Refresh  Refresh
	Schedule Schedule
	// DiscoveryInterval is how often issuers' metadata is fetched again
	// (broker/discovery.go); 0 turns the refetch off.
	DiscoveryInterval time.Duration

	// The parts' options, one struct per part; broker.New fills in what
	// the broker shares with them (clock, logger, goroutines).
	Notice notice.Options
	Detect detect.Config // an Interval of 0 turns periodic detection off
	Flow   authflow.Options
}

// Claim tunes the refresh claim (broker/claim.go).
type Claim struct {
	// TTL is how long a claim lasts; Margin how long before its end the
	// holder's provider calls must finish; Poll how often a waiter reads
	// the family while another replica holds the claim.
	TTL, Margin, Poll time.Duration
}

// Refresh tunes refreshes and the serving of access tokens
// (broker/refresh.go, broker/access.go).
type Refresh struct {
	// ExpiryDelta: how long before its expiry a token stops being handed
	// out (see pacing.ExpiryMargin).
	ExpiryDelta time.Duration
	// Timeout bounds one refresh, retries included.
	Timeout time.Duration
	// RetryBase is the first backoff step of retries the provider surely
	// did not process; NotProcessedTries bounds those attempts.
	RetryBase         time.Duration
	NotProcessedTries int
	// RejectionInterval is the least time between two refreshes triggered
	// by rejected-token reports for one credential.
	RejectionInterval time.Duration
}

// Backoff is the wait before retry attempt+1 of a refresh or a store
// write: RetryBase doubled per attempt (at most 2⁸ times), at least atLeast.
func (r Refresh) Backoff(attempt int, atLeast time.Duration) time.Duration {
	return max(r.RetryBase<<min(attempt, 8), atLeast)
}

// Schedule tunes the proactive-refresh scheduler (broker/scheduler.go).
type Schedule struct {
	Interval time.Duration
}

// DefaultDiscoveryInterval is how often issuers' metadata is fetched again.
const DefaultDiscoveryInterval = time.Hour

// Defaults returns the options a broker has when none is given.
func Defaults() Options {
	return Options{
		Logger:     slog.New(slog.DiscardHandler),
		Now:        time.Now,
		ReplicaID:  newReplicaID(),
		CloseGrace: 30 * time.Second,
		Claim:      Claim{TTL: 45 * time.Second, Margin: 15 * time.Second, Poll: 50 * time.Millisecond},
		Refresh: Refresh{ExpiryDelta: 10 * time.Second, Timeout: 2 * time.Minute, RetryBase: 200 * time.Millisecond,
			NotProcessedTries: 4, RejectionInterval: 30 * time.Second},
		Schedule:          Schedule{Interval: 5 * time.Second},
		DiscoveryInterval: DefaultDiscoveryInterval,
		DutyLeasePeriod:   DefaultDutyLeasePeriod,

		Notice: notice.Options{Retention: 10000, Buffer: 256, Poll: 500 * time.Millisecond},
		Detect: detect.Config{Interval: detect.DefaultIntrospectionInterval, Concurrency: detect.DefaultIntrospectionConcurrency},
		Flow:   authflow.Options{Lifetime: 10 * time.Minute, MaxFlows: authflow.MaxPendingFlows},
	}
}

func newReplicaID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// WithLogger sets the structured logger (default: discard).
func WithLogger(l *slog.Logger) Option {
	return func(o *Options) error {
		if l == nil {
			return errors.New("broker: nil logger")
		}
		o.Logger = l
		return nil
	}
}

// WithClock injects the clock, for tests.
func WithClock(now func() time.Time) Option {
	return func(o *Options) error {
		if now == nil {
			return errors.New("broker: nil clock")
		}
		o.Now = now
		return nil
	}
}

// WithExpiryDelta sets how long before its expiry an access token stops being
// handed out (default 10s, but never more than a quarter of the token's
// lifetime, see pacing.ExpiryMargin): a consumer needs time to use it.
func WithExpiryDelta(d time.Duration) Option {
	return durationOption("expiry delta", d, 0, time.Hour, func(o *Options) { o.Refresh.ExpiryDelta = d })
}

// WithSchedulerInterval sets how often proactive refreshes are considered
// (default 5s).
func WithSchedulerInterval(d time.Duration) Option {
	return durationOption("scheduler interval", d, 10*time.Millisecond, time.Hour, func(o *Options) { o.Schedule.Interval = d })
}

// WithRejectionInterval sets the least time between two refreshes triggered
// by rejected-token reports for one credential (default 30s).
func WithRejectionInterval(d time.Duration) Option {
	return durationOption("rejection interval", d, 0, time.Hour, func(o *Options) { o.Refresh.RejectionInterval = d })
}

// WithIntrospectionInterval sets how often each active family's refresh
// token is introspected at the provider to detect a revocation there (a
// reused old token, an admin) before the next refresh would meet it (default
// 5m; 0 turns periodic detection off). Only credentials whose provider has
// an introspection endpoint are checked. Each family is checked once per
// interval, ±10% jitter, spread over the interval, by the replica holding
// its duty lease (broker/duties.go): the provider sees credentials /
// interval introspection calls however many replicas run, and the store is
// read only when the provider reports a token inactive. See package detect.
func WithIntrospectionInterval(d time.Duration) Option {
	return func(o *Options) error {
		if d != 0 && (d < 10*time.Millisecond || d > 24*time.Hour) {
			return fmt.Errorf("broker: introspection interval %s out of range: 0 (off) or [10ms, 24h]", d)
		}
		o.Detect.Interval = d
		return nil
	}
}

// WithIntrospectionConcurrency bounds the introspection calls of periodic
// detection in flight at once (default 32). One replica checks
// credentials / interval families a second; it keeps up while that stays
// below concurrency / introspection latency.
func WithIntrospectionConcurrency(n int) Option {
	return func(o *Options) error {
		if n < 1 || n > 1024 {
			return fmt.Errorf("broker: introspection concurrency %d out of range [1, 1024]", n)
		}
		o.Detect.Concurrency = n
		return nil
	}
}

// WithRetryBase sets the first backoff step for retries of provider calls the
// provider surely did not process (default 200ms, doubling).
func WithRetryBase(d time.Duration) Option {
	return durationOption("retry base", d, time.Millisecond, time.Minute, func(o *Options) { o.Refresh.RetryBase = d })
}

// WithRefreshTimeout bounds one refresh, retries included (default 2m).
func WithRefreshTimeout(d time.Duration) Option {
	return durationOption("refresh timeout", d, 100*time.Millisecond, 10*time.Minute, func(o *Options) { o.Refresh.Timeout = d })
}

// WithReplicaID names this replica in refresh claims (default: random per
// process). Two live replicas must never share one.
func WithReplicaID(id string) Option {
	return func(o *Options) error {
		if id == "" || len(id) > 64 || !textcheck.Printable(id) {
			return errors.New("broker: replica id must be 1-64 printable characters")
		}
		o.ReplicaID = id
		return nil
	}
}

// WithClaimTiming sets how long a refresh claim lasts and how long before
// its end the holder's provider calls must finish (defaults 45s and 15s).
// The margin is the bound on process pauses plus clock skew between
// replicas under which no two replicas present the same refresh token.
func WithClaimTiming(ttl, margin time.Duration) Option {
	return func(o *Options) error {
		if margin <= 0 || ttl <= 2*margin || ttl > 10*time.Minute {
			return fmt.Errorf("broker: claim ttl %s must exceed twice the margin %s (and be at most 10m)", ttl, margin)
		}
		o.Claim.TTL, o.Claim.Margin = ttl, margin
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
	return func(o *Options) error {
		o.ExclusiveStore = true
		return nil
	}
}

// WithNoticePollInterval sets how often this replica reads the notice log's
// head for notices other replicas appended (default 500ms): the bound on how
// late their notices reach this replica's watchers, at one store read per
// interval whatever the number of credentials.
func WithNoticePollInterval(d time.Duration) Option {
	return durationOption("notice poll interval", d, 10*time.Millisecond, time.Minute, func(o *Options) { o.Notice.Poll = d })
}

// WithNoticeRecords writes each notice's own record as well as its page,
// as replicas of versions before 2026-12-06 read the notice log: for a
// rolling upgrade from such a version, until every replica runs this one.
// Off (the default), a notice's page is its only copy beyond the log's
// head: two store writes less per notice.
func WithNoticeRecords(on bool) Option {
	return func(o *Options) error {
		o.Notice.Records = on
		return nil
	}
}

// WithMaxFlows sets how many authorization flows the store may hold at once
// (default authflow.MaxPendingFlows); further starts fail with
// authflow.ErrTooManyFlows.
func WithMaxFlows(n int) Option {
	return func(o *Options) error {
		if n < 1 || n > 100_000 {
			return fmt.Errorf("broker: max flows %d out of range [1, 100000]", n)
		}
		o.Flow.MaxFlows = n
		return nil
	}
}

// WithNoticeRetention sets how many notices the notice log keeps for
// resuming watchers (default 10,000).
func WithNoticeRetention(n int) Option {
	return func(o *Options) error {
		if n < 1 || n > 1_000_000 {
			return fmt.Errorf("broker: notice retention %d out of range [1, 1000000]", n)
		}
		o.Notice.Retention = n
		return nil
	}
}

// WithFlowTiming sets how often the sweeping replica sweeps the pending
// flows (taking over device flows whose poller's lease ran out, expiring
// and deleting old ones; default 10s, one store List per sweep plus one
// read per flow) and the lease a device flow's poller holds (default 30s,
// at least three polling intervals). A dead poller is replaced within
// lease + sweep (plus up to a duty lease period when the replica that died
// was the one sweeping: broker/duties.go).
func WithFlowTiming(sweep, lease time.Duration) Option {
	return func(o *Options) error {
		if sweep < 10*time.Millisecond || sweep > time.Hour {
			return fmt.Errorf("broker: flow sweep interval %s out of range [10ms, 1h]", sweep)
		}
		if lease < 300*time.Millisecond || lease > 10*time.Minute {
			return fmt.Errorf("broker: device lease %s out of range [300ms, 10m]", lease)
		}
		o.Flow.SweepInterval, o.Flow.Lease = sweep, lease
		return nil
	}
}

// WithCallbackURL sets the server's own OAuth callback URL
// (<public URL>/oauth/callback), used by authorization-code flows started
// without a redirect URI. It must be https, or http on loopback, and be
// registered with each provider app.
func WithCallbackURL(u string) Option {
	return func(o *Options) error {
		if err := credspec.ValidateEndpointURL(u); err != nil {
			return fmt.Errorf("broker: callback URL: %w", err)
		}
		o.Flow.CallbackURL = u
		return nil
	}
}

// WithDiscoveryInterval sets how often each replica fetches the metadata of
// the issuers its credentials name again (default 1h; 0 turns the refetch
// off, leaving the documents fetched at creation). One fetch per issuer per
// pass; the store is written only for a changed document.
func WithDiscoveryInterval(d time.Duration) Option {
	return func(o *Options) error {
		if d != 0 && (d < 10*time.Millisecond || d > 7*24*time.Hour) {
			return fmt.Errorf("broker: discovery interval %s out of range: 0 (off) or [10ms, 168h]", d)
		}
		o.DiscoveryInterval = d
		return nil
	}
}

func durationOption(name string, d, lo, hi time.Duration, set func(*Options)) Option {
	return func(o *Options) error {
		if d < lo || d > hi {
			return fmt.Errorf("broker: %s %s out of range [%s, %s]", name, d, lo, hi)
		}
		set(o)
		return nil
	}
}

// DefaultDutyLeasePeriod is the default duty lease period: a replica that
// dies has its duties taken over within it.
const DefaultDutyLeasePeriod = lease.DefaultPeriod

// WithDutyLeasePeriod sets the duty lease period (default 30s): the
// longest a dead replica's duties wait for another replica. Each replica
// writes the shared lease record ten times a period, at most twice that
// (lease.MaxWritesPerSecond). 0 turns sharing off: every replica does
// every duty, as a replica alone on its store (WithExclusiveStore) does.
func WithDutyLeasePeriod(d time.Duration) Option {
	return func(o *Options) error {
		if d != 0 {
			if err := lease.ValidatePeriod(d); err != nil {
				return fmt.Errorf("broker: %w", err)
			}
		}
		o.DutyLeasePeriod = d
		return nil
	}
}
