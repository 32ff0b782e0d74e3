package broker

import (
	"context"
	"time"

	"github.com/rotavault/rotavault/broker/internal/lease"
)

// Duties shared among replicas: early detection's introspection, the
// scheduler's idle-timeout refreshes, the consumer catalog's merges (package
// catalog asks OwnsShard) and the flow sweep are done, for each credential
// and for the sweep as a whole, by the one replica holding the shard's lease
// (package lease), not by every replica. What a caller asks for, and the
// refresh ahead of expiry of a token this replica hands out, stay with the
// replica asked; the refresh claims keep rotations single as before. A
// replica that gains a shard wakes its credentials in the scheduler
// (wakeShards): their idle refreshes are looked at on the next tick.

// DutyStats are this replica's duty-lease counters (lease.Stats).
type DutyStats = lease.Stats

// dutyShards says whether this replica does the duties of a key (a
// credential id; flowSweepDuty).
type dutyShards interface {
	Owns(key string) bool
	OwnsShard(i int) bool
	Stats() lease.Stats
}

// flowSweepDuty is the flow sweep's key: one replica sweeps.
const flowSweepDuty = "duty/flow-sweep"

// joinDuties takes this replica's share of the duties before they start
// (alone: all of them) and renews it until schedCtx ends.
func (b *Broker) joinDuties(ctx, schedCtx context.Context) {
	if b.opts.ExclusiveStore || b.opts.DutyLeasePeriod == 0 {
		b.duties = lease.All{}
		return
	}
	// Leases measure the real time between replicas' writes, as the
	// ticker does: not b.opts.now, which a test may make jump.
	m, err := lease.New(lease.Config{Store: b.store, ReplicaID: b.opts.ReplicaID, Period: b.opts.DutyLeasePeriod, Now: time.Now, Logger: b.log,
		Gained: b.wakeShards})
	if err != nil {
		b.log.ErrorContext(ctx, "duty leases off: every duty is done here", "err", err)
		b.duties = lease.All{}
		return
	}
	if err := m.Join(ctx); err != nil {
		b.log.WarnContext(ctx, "could not take a share of the duties yet; trying again every tick", "err", err)
	}
	b.duties = m
	b.goTracked(func() { m.Run(schedCtx) })
}

// owns reports whether this replica does key's duties now.
func (b *Broker) owns(key string) bool { return b.duties.Owns(key) }
