package main

import (
	"time"

	"github.com/spf13/pflag"

	"github.com/rotavault/rotavault/broker/option"
)

const (
	dutyLeasePeriodFlag = "duty-lease-period"
	// minDutyLeasePeriod: each replica writes the lease record ten times a
	// period; below a second that is store load for nothing.
	minDutyLeasePeriod = time.Second
	maxDutyLeasePeriod = 10 * time.Minute
)

// dutyFlags say how replicas sharing a store share the duties every one
// of them could do for every credential (broker/duties.go).
type dutyFlags struct {
	leasePeriod time.Duration
}

func (f *dutyFlags) register(fs *pflag.FlagSet) {
	fs.DurationVar(&f.leasePeriod, dutyLeasePeriodFlag, option.DefaultDutyLeasePeriod, "replicas sharing a Vault store split early detection's introspection, the refreshes before an idle timeout and the flow sweep by leases on 64 shards, so the provider and Vault see one replica's load: a replica that dies has its share taken over within this period, one that stops within a tenth of it, and one that joins takes its share within a fifth (two of its ticks). Each replica writes the lease record ten times a period, at most twice that under contention; 0 turns sharing off (every replica does every duty). Unused with the embedded store, whose one process does every duty")
}

// options are the broker options the flags say, or a usage error.
func (f *dutyFlags) options() ([]option.Option, error) {
	if f.leasePeriod != 0 && (f.leasePeriod < minDutyLeasePeriod || f.leasePeriod > maxDutyLeasePeriod) {
		return nil, usageErrorf("--%s must be 0 (off) or between %s and %s", dutyLeasePeriodFlag, minDutyLeasePeriod, maxDutyLeasePeriod)
	}
	return []option.Option{option.WithDutyLeasePeriod(f.leasePeriod)}, nil
}
