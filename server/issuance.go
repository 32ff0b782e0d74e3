package server

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/rotavault/rotavault/audit"
)

// DefaultIssuanceFlushInterval is how often token issuance is summarised
// into the audit trail.
const DefaultIssuanceFlushInterval = time.Minute

// ActionTokensIssued is the audit action summarising the access tokens one
// caller got for one credential since the previous summary.
const ActionTokensIssued = "tokens_issued"

// Auditor records audit events; *audit.FileLog is one.
type Auditor interface {
	Record(ctx context.Context, e audit.Event) error
}

type issuanceKey struct{ caller, credential string }

type issuanceCount struct {
	count       uint64
	first, last time.Time
}

// issuanceCounter aggregates GetAccessToken answers per caller and
// credential in memory and writes one audit record per pair and interval:
// a record (a file sync and, on Vault, a write) per call would put the
// audit trail on the hot path that serves cached tokens.
type issuanceCounter struct {
	auditor  Auditor
	log      *slog.Logger
	interval time.Duration
	now      func() time.Time

	mu     sync.Mutex
	counts map[issuanceKey]*issuanceCount

	stop    chan struct{}
	stopped chan struct{}
	once    sync.Once
}

func newIssuanceCounter(auditor Auditor, interval time.Duration, log *slog.Logger) *issuanceCounter {
	if interval <= 0 {
		interval = DefaultIssuanceFlushInterval
	}
	c := &issuanceCounter{
		auditor: auditor, log: log, interval: interval, now: time.Now,
		counts: make(map[issuanceKey]*issuanceCount),
		stop:   make(chan struct{}), stopped: make(chan struct{}),
	}
	go c.run()
	return c
}

func (c *issuanceCounter) add(caller, credential string) {
	now := c.now()
	k := issuanceKey{caller, credential}
	c.mu.Lock()
	n := c.counts[k]
	if n == nil {
		n = &issuanceCount{first: now}
		c.counts[k] = n
	}
	n.count++
	n.last = now
	c.mu.Unlock()
}

func (c *issuanceCounter) run() {
	defer close(c.stopped)
	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.flush(context.Background())
		}
	}
}

// flush writes one record per caller and credential seen since the last
// flush. Counts whose record cannot be written are kept for the next one.
func (c *issuanceCounter) flush(ctx context.Context) {
	c.mu.Lock()
	counts := c.counts
	c.counts = make(map[issuanceKey]*issuanceCount)
	c.mu.Unlock()
	keys := make([]issuanceKey, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].credential != keys[j].credential {
			return keys[i].credential < keys[j].credential
		}
		return keys[i].caller < keys[j].caller
	})
	for _, k := range keys {
		n := counts[k]
		err := c.auditor.Record(ctx, audit.Event{
			Time: c.now().UTC(), Actor: k.caller, Action: ActionTokensIssued, Credential: k.credential,
			Detail: fmt.Sprintf("count=%d first=%s last=%s", n.count, n.first.UTC().Format(time.RFC3339), n.last.UTC().Format(time.RFC3339)),
		})
		if err != nil {
			c.log.ErrorContext(ctx, "audit: token issuance summary not written; kept for the next flush",
				"caller", k.caller, "credential", k.credential, "count", n.count, "err", err)
			c.mu.Lock()
			cur := c.counts[k]
			if cur == nil {
				c.counts[k] = n
			} else {
				cur.count += n.count
				cur.first = n.first
			}
			c.mu.Unlock()
		}
	}
}

// close stops the periodic flush and writes what is left.
func (c *issuanceCounter) close(ctx context.Context) {
	c.once.Do(func() {
		close(c.stop)
		<-c.stopped
		c.flush(ctx)
	})
}
