package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/rotavault/rotavault/store"
)

const (
	// DefaultPeriod is the default lease period: the longest a dead
	// replica's shards stay without a holder.
	DefaultPeriod = 30 * time.Second
	// MinPeriod and MaxPeriod bound the lease period. Under a second suits
	// tests only: every replica writes the table ten times a period.
	MinPeriod = 100 * time.Millisecond
	MaxPeriod = 10 * time.Minute
	// MaxWritesPerTick is the write bound: a replica's lease writes
	// (conflicting ones included) average at most this many per tick
	// (Period/ticksPerPeriod) — a renewal and a retry after a conflict —
	// with a burst of one more. However many replicas or other writers
	// contend for the record, a replica waits for the bound, not retries
	// at the store's pace.
	MaxWritesPerTick = 2
	// ticksPerPeriod: a replica renews ten times a period.
	ticksPerPeriod = 10
	// goodbyeTimeout bounds the write that leaves the table at shutdown.
	goodbyeTimeout = 5 * time.Second
)

// ErrThrottled: the write bound held a lease write back for a whole tick;
// the replica tries again on its next tick.
var ErrThrottled = errors.New("lease: lease write rate bound reached")

// Config holds a Manager's dependencies.
type Config struct {
	Store store.Store
	// ReplicaID names this replica in the table; two live replicas must
	// never share one.
	ReplicaID string
	// Period is the lease period (DefaultPeriod when 0); see the package doc.
	Period time.Duration
	// Now is the clock that judges leases: it must measure the real time
	// that passes between replicas' writes (time.Now; a test's fake clock
	// that jumps would end or stretch every lease).
	Now    func() time.Time
	Logger *slog.Logger
	// Gained, when set, is called with the shards (bit ShardOf(key) set
	// for each) whose duties this replica does from now on and did not
	// just before: taken over, or held again after its lease lapsed. The
	// duties of those shards' keys may be due already; nothing else says
	// so. Called from Join and Run, with the table's lock held: it must
	// not block.
	Gained func(shards uint64)
}

// All does every duty: the duties of a replica alone on its store, or
// with sharing off. Its Stats say it owns every shard.
type All struct{}

// Owns reports true for every key.
func (All) Owns(string) bool { return true }

// OwnsShard reports true for every shard.
func (All) OwnsShard(int) bool { return true }

// Stats are those of the only member owning every shard.
func (All) Stats() Stats { return Stats{Owned: Shards, Members: 1} }

// Stats are a Manager's counters.
type Stats struct {
	// Owned is how many shards this replica holds now; Members how many
	// live replicas its last write counted.
	Owned, Members int
	// Writes counts lease writes by result: ok, conflict (another replica
	// wrote first; re-read), error; Throttled the writes the bound held
	// back.
	Writes, Conflicts, Failures, Throttled int64
	// Handovers counts shards this replica took that another held before:
	// freed when it died or left, or given back on a rebalance.
	Handovers int64
}

// Manager holds this replica's leases. Owns is safe for concurrent use;
// Join, Run and Leave are called by one owner, in that order.
type Manager struct {
	cfg     Config
	tick    time.Duration
	ttl     time.Duration
	margin  time.Duration
	limiter *rate.Limiter
	log     *slog.Logger

	held atomic.Pointer[holding]

	// mu serialises the table's read-decide-write loops (ticks, goodbye)
	// and guards seen.
	mu sync.Mutex
	// seen is, per other member, its last heartbeat and when this replica
	// first saw it.
	seen map[string]sighting

	writes, conflicts, failures, throttled, handovers atomic.Int64
}

// holding is the shards this replica may work on, until when.
type holding struct {
	mine    uint64
	until   time.Time
	members int
}

type sighting struct {
	beat uint64
	at   time.Time
}

// New returns the leases of cfg.ReplicaID; it joins nothing until Join.
func New(cfg Config) (*Manager, error) {
	if cfg.Store == nil || cfg.ReplicaID == "" || cfg.Now == nil {
		return nil, errors.New("lease: Config needs Store, ReplicaID and Now")
	}
	if cfg.Period == 0 {
		cfg.Period = DefaultPeriod
	}
	if err := ValidatePeriod(cfg.Period); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	tick := cfg.Period / ticksPerPeriod
	return &Manager{
		cfg:     cfg,
		tick:    tick,
		ttl:     cfg.Period / 2,
		margin:  cfg.Period / 20,
		limiter: rate.NewLimiter(rate.Every(tick/MaxWritesPerTick), MaxWritesPerTick+1),
		log:     cfg.Logger,
		seen:    make(map[string]sighting),
	}, nil
}

// ValidatePeriod checks a lease period against [MinPeriod, MaxPeriod].
func ValidatePeriod(d time.Duration) error {
	if d < MinPeriod || d > MaxPeriod {
		return fmt.Errorf("lease: lease period %s out of range [%s, %s]", d, MinPeriod, MaxPeriod)
	}
	return nil
}

// MaxWritesPerSecond is the bound on one replica's lease writes per
// second, beyond a burst of MaxWritesPerTick+1, for a lease period.
func MaxWritesPerSecond(period time.Duration) float64 {
	return MaxWritesPerTick * ticksPerPeriod / period.Seconds()
}

// Owns reports whether this replica does key's duties now: it holds key's
// shard, and its last renewal is recent enough that no other replica can
// have taken the shard over.
func (m *Manager) Owns(key string) bool { return m.OwnsShard(ShardOf(key)) }

// OwnsShard is Owns for every key of shard i (ShardOf): for duties that
// walk a shard's records rather than look up one key.
func (m *Manager) OwnsShard(i int) bool {
	h := m.held.Load()
	return i >= 0 && i < Shards && h != nil && h.mine&(1<<i) != 0 && m.cfg.Now().Before(h.until)
}

// Stats returns the counters.
func (m *Manager) Stats() Stats {
	s := Stats{Writes: m.writes.Load(), Conflicts: m.conflicts.Load(), Failures: m.failures.Load(),
		Throttled: m.throttled.Load(), Handovers: m.handovers.Load()}
	if h := m.held.Load(); h != nil {
		s.Members = h.members
		if m.cfg.Now().Before(h.until) {
			s.Owned = bits.OnesCount64(h.mine)
		}
	}
	return s
}

// Join takes this replica's first share: alone, every shard, before its
// duties start. An error (the store is down) is only logged by callers:
// Run tries again every tick.
func (m *Manager) Join(ctx context.Context) error {
	return m.renew(ctx)
}

// Run renews the leases every tick (±10%) until ctx ends, then leaves the
// table so that the others take this replica's shards at once.
func (m *Manager) Run(ctx context.Context) {
	defer m.leave(context.WithoutCancel(ctx))
	jitter := m.tick / 10
	t := time.NewTimer(m.tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := m.renew(ctx); err != nil && ctx.Err() == nil {
			m.log.DebugContext(ctx, "duty leases not renewed; trying again next tick", "err", err)
		}
		t.Reset(m.tick - jitter + rand.N(2*jitter+1))
	}
}

// renew is one read-decide-write of the table: heartbeat, dead members
// out, this replica's share adjusted. A conflict re-reads and decides again
// (another replica wrote), for as long as the write bound allows within one
// tick; then the next tick tries again.
func (m *Manager) renew(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, m.tick)
	defer cancel()
	m.mu.Lock()
	defer m.mu.Unlock()
	for {
		t, version, err := m.read(ctx)
		if err != nil {
			return err
		}
		c := t.renew(m.cfg.ReplicaID, m.observe(t, m.cfg.Now()))
		// Stop the duties of shards given back before the write frees
		// them, so that two replicas never do a shard's duties at once.
		m.narrow(c.mine)
		if err := m.limiter.Wait(ctx); err != nil {
			m.throttled.Add(1)
			return fmt.Errorf("%w: %w", ErrThrottled, err)
		}
		start := m.cfg.Now()
		_, err = m.cfg.Store.Put(ctx, Key, c.next.encode(), version)
		switch {
		case errors.Is(err, store.ErrConflict):
			m.conflicts.Add(1)
			continue // another replica wrote: decide again on what it wrote
		case err != nil:
			m.failures.Add(1)
			return fmt.Errorf("lease: writing the lease table: %w", err)
		}
		m.writes.Add(1)
		m.handovers.Add(int64(c.handovers))
		// No other replica can have seen this write before it started:
		// none judges this one dead before start + ttl on its own clock.
		var had uint64 // what Owns said until now
		if h := m.held.Load(); h != nil && m.cfg.Now().Before(h.until) {
			had = h.mine
		}
		m.held.Store(&holding{mine: c.mine, until: start.Add(m.ttl - m.margin), members: len(c.next.Members)})
		if gained := c.mine &^ had; gained != 0 && m.cfg.Gained != nil {
			m.cfg.Gained(gained)
		}
		return nil
	}
}

func (m *Manager) read(ctx context.Context) (*table, uint64, error) {
	rec, err := m.cfg.Store.Get(ctx, Key)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return emptyTable(), 0, nil
	case err != nil:
		return nil, 0, fmt.Errorf("lease: reading the lease table: %w", err)
	}
	t, err := decodeTable(rec.Value)
	if err != nil {
		return nil, 0, err
	}
	return t, rec.Version, nil
}

// observe notes the other members' heartbeats at now and returns those
// that have not moved for ttl. Called with mu held.
func (m *Manager) observe(t *table, now time.Time) map[string]bool {
	dead := make(map[string]bool)
	for id, beat := range t.Members {
		if id == m.cfg.ReplicaID {
			continue
		}
		s, ok := m.seen[id]
		switch {
		case !ok || s.beat != beat:
			m.seen[id] = sighting{beat: beat, at: now}
		case now.Sub(s.at) >= m.ttl:
			dead[id] = true
		}
	}
	for id := range m.seen {
		if _, ok := t.Members[id]; !ok {
			delete(m.seen, id)
		}
	}
	return dead
}

// narrow drops from this replica's holding the shards not in keep.
func (m *Manager) narrow(keep uint64) {
	if h := m.held.Load(); h != nil && h.mine&^keep != 0 {
		m.held.Store(&holding{mine: h.mine & keep, until: h.until, members: h.members})
	}
}

// leave removes this replica from the table, its duties stopped first. It
// is the goodbye at shutdown, outside the write bound: once per process.
func (m *Manager) leave(ctx context.Context) {
	m.held.Store(nil)
	ctx, cancel := context.WithTimeout(ctx, goodbyeTimeout)
	defer cancel()
	m.mu.Lock()
	defer m.mu.Unlock()
	for range MaxWritesPerTick {
		t, version, err := m.read(ctx)
		if err != nil || version == 0 {
			return
		}
		if _, member := t.Members[m.cfg.ReplicaID]; !member {
			return
		}
		_, err = m.cfg.Store.Put(ctx, Key, t.leave(m.cfg.ReplicaID).encode(), version)
		if !errors.Is(err, store.ErrConflict) {
			if err != nil {
				m.log.WarnContext(ctx, "could not leave the duty lease table; the other replicas take this one's shards when its lease expires", "err", err)
			}
			return
		}
	}
}
