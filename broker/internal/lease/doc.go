// Package lease shares duties among the live replicas of one store: the
// periodic work every replica could do for every credential (introspection,
// idle-timeout refreshes, the flow sweep) is split into Shards shards, and
// each shard is done by the one replica holding its lease. Rotations are not
// duties: their refresh claims (broker/claim.go) keep working unchanged.
//
// # The record
//
// One store record, Key, holds the lease table: the live members (replica
// id → heartbeat counter) and, per shard, the member holding it ("" free).
// Every change is one check-and-set write of the whole table on the version
// read (etcd's concurrency package: read, decide, compare-and-set, re-read
// on conflict), so a rebalance moves shards atomically. One record instead
// of one per shard: a renewal costs one read and one write per replica per
// tick, not one per shard, and Vault's KV has no multi-key transaction.
//
// # Timing
//
// A lease period P (DefaultPeriod, WithPeriod) is the promise: a replica
// that dies without a goodbye has its shards taken over within P. Each
// replica ticks every P/10: it reads the table, bumps its heartbeat, frees
// the shards of members found dead, gives back shards beyond its fair share
// ⌈Shards / live members⌉ and takes free shards up to it, and writes. A
// member is dead once its heartbeat has not moved for P/2 as the observer
// sees it; the observer then notices on its next tick and the rest of its
// shards are taken on the one after: 3 ticks + P/2 = 0.8 P after the last
// heartbeat, within P. A replica closing (Release) leaves the table at once,
// so its shards move on the next tick of the others.
//
// # Clocks
//
// No wall-clock time is compared across replicas: a member's death is
// judged by the observer's own (monotonic) clock, from when it first saw
// the member's current heartbeat. The holder stops doing its shards' duties
// P/2 − P/20 after it started its last successful write, by its own clock;
// an observer cannot have seen that write before it started, so it waits
// at least P/2 from then. The assumption is only that clocks run at the
// same rate within P/20 over P/2 (5%), not that they agree. While a
// replica cannot write (the store is down, or the write bound holds it
// back) its leases lapse and its duties pause; rotations asked for by
// callers do not depend on leases and go on.
//
// # Cost and bound
//
// A renewal is one Get and one Put per replica per tick: with 5 replicas and
// the default 30 s period, 5 reads and 5 writes every 3 s for the whole
// cluster, however many credentials. Writes are bounded by a token bucket
// (MaxWritesPerTick per tick on average, burst MaxWritesPerTick+1): a
// replica's lease writes per second never exceed MaxWritesPerTick × 10 / P
// (0.67/s at 30 s) beyond the burst, conflicts and rebalances included.
//
// # Starting
//
// A replica joins with its first tick, before its duties start: alone in a
// fresh store (or after every other replica left with a goodbye) it owns
// every shard at once. Beside a member it cannot tell from a dead one (a
// predecessor that crashed) it takes that one's shards P/2 after it first
// sees it, within P.
package lease
