package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/catalog"
)

// DefaultIssuanceFlushInterval is how often token issuance is summarised
// into the audit trail and the consumer catalog.
const DefaultIssuanceFlushInterval = time.Minute

// flushTimeout bounds one flush, so that a store or audit trail that hangs
// holds up neither the next flush nor Shutdown for long.
const flushTimeout = 30 * time.Second

// ActionTokensIssued is the audit action summarising the access tokens one
// caller got for one credential since the previous summary.
const ActionTokensIssued = "tokens_issued"

// Auditor records audit events; *audit.FileLog is one.
type Auditor interface {
	Record(ctx context.Context, e audit.Event) error
}

// ConsumerCatalog keeps the consumer catalog; *catalog.Catalog is one (see
// its Record, MergeInboxes and List for the contract).
type ConsumerCatalog interface {
	Record(ctx context.Context, uses []catalog.Use) ([]catalog.Use, error)
	MergeInboxes(ctx context.Context, interval time.Duration, now time.Time, all bool) error
	List(ctx context.Context, credentialID string, after catalog.Cursor, limit int) ([]catalog.Consumer, bool, error)
}

type issuanceKey struct{ caller, credential string }

type issuanceCount struct {
	count       uint64
	first, last time.Time
}

// issuanceCounter aggregates GetAccessToken answers per caller and
// credential in memory and, every interval, hands the aggregates to its
// sinks: one audit record per pair, and the uses of each credential to the
// consumer catalog (which, on a store shared by replicas, writes them to
// this replica's inboxes and merges the inboxes of the shards it holds:
// catalog.Catalog.MergeInboxes, called every flush). A store or audit write
// per call would put them on the hot path that serves cached tokens.
//
// Each sink keeps what it failed to write in a backlog of its own, merged
// into the next flush, so a failing sink neither loses counts nor makes the
// other count twice.
type issuanceCounter struct {
	auditor  Auditor         // nil: no audit summaries
	catalog  ConsumerCatalog // nil: no consumer catalog
	log      *slog.Logger
	interval time.Duration
	now      func() time.Time

	mu     sync.Mutex
	counts map[issuanceKey]*issuanceCount

	// flushMu makes flushes one at a time and guards the backlogs and
	// catalogMerged.
	flushMu        sync.Mutex
	auditBacklog   map[issuanceKey]*issuanceCount
	catalogBacklog map[issuanceKey]*issuanceCount
	// catalogMerged is, per credential this replica merged into the
	// catalog lately, when it did and which identities it merged.
	catalogMerged map[string]*catalogMerge

	stop    chan struct{}
	stopped chan struct{}
	once    sync.Once
}

func newIssuanceCounter(auditor Auditor, catalog ConsumerCatalog, interval time.Duration, log *slog.Logger) *issuanceCounter {
	if interval <= 0 {
		interval = DefaultIssuanceFlushInterval
	}
	c := &issuanceCounter{
		auditor: auditor, catalog: catalog, log: log, interval: interval, now: time.Now,
		counts:       make(map[issuanceKey]*issuanceCount),
		auditBacklog: make(map[issuanceKey]*issuanceCount), catalogBacklog: make(map[issuanceKey]*issuanceCount),
		catalogMerged: make(map[string]*catalogMerge),
		stop:          make(chan struct{}), stopped: make(chan struct{}),
	}
	go c.run()
	return c
}

// add counts one access token handed to caller. It only touches memory.
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
			ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
			_ = c.flushSome(ctx, false, false) // failures are logged and kept
			cancel()
		}
	}
}

// merge adds n into m[k].
func merge(m map[issuanceKey]*issuanceCount, k issuanceKey, n issuanceCount) {
	cur := m[k]
	if cur == nil {
		m[k] = &n
		return
	}
	cur.count += n.count
	if n.first.Before(cur.first) {
		cur.first = n.first
	}
	if n.last.After(cur.last) {
		cur.last = n.last
	}
}

// flushSome hands what was counted since the last flush, and what a sink
// failed to take then, to the sinks (the catalog only what is due, or all
// with all: see flushCatalog), and merges the catalog's inboxes of the
// shards this replica holds (of every shard with mergeAll). Counts a sink
// cannot take are kept for its next flush; the error says why.
func (c *issuanceCounter) flushSome(ctx context.Context, all, mergeAll bool) error {
	c.flushMu.Lock()
	defer c.flushMu.Unlock()
	c.mu.Lock()
	counts := c.counts
	c.counts = make(map[issuanceKey]*issuanceCount)
	c.mu.Unlock()
	var errs []error
	if c.auditor != nil {
		for k, n := range counts {
			merge(c.auditBacklog, k, *n)
		}
		errs = append(errs, c.flushAudit(ctx))
	}
	if c.catalog != nil {
		for k, n := range counts {
			merge(c.catalogBacklog, issuanceKey{catalogIdentity(k.caller), k.credential}, *n)
		}
		errs = append(errs, c.flushCatalog(ctx, all))
		if err := c.catalog.MergeInboxes(ctx, c.interval, c.now(), mergeAll); err != nil {
			c.log.WarnContext(ctx, "consumer inboxes not fully merged; the rest at the next flush", "err", err)
			errs = append(errs, fmt.Errorf("server: consumer inboxes: %w", err))
		}
	}
	return errors.Join(errs...)
}

// flushAudit writes one record per caller and credential in the backlog.
func (c *issuanceCounter) flushAudit(ctx context.Context) error {
	var failed int
	for _, k := range sortedKeys(c.auditBacklog) {
		n := c.auditBacklog[k]
		err := c.auditor.Record(ctx, audit.Event{
			Time: c.now().UTC(), Actor: k.caller, Action: ActionTokensIssued, Credential: k.credential,
			Detail: fmt.Sprintf("count=%d first=%s last=%s", n.count, n.first.UTC().Format(time.RFC3339), n.last.UTC().Format(time.RFC3339)),
		})
		if err != nil {
			c.log.ErrorContext(ctx, "audit: token issuance summary not written; kept for the next flush",
				"caller", k.caller, "credential", k.credential, "count", n.count, "err", err)
			failed++
			continue
		}
		delete(c.auditBacklog, k)
	}
	if failed > 0 {
		return fmt.Errorf("server: %d token issuance summaries not written to the audit trail", failed)
	}
	return nil
}

// catalogDue says whether credential's uses in the backlog go to the
// catalog at this flush: when one of its identities is new to this
// replica, or when its slot (catalog.Slot: a period long, at a phase fixed
// per credential so that credentials spread over the period) has changed
// since its last hand-over.
//
// A credential whose consumers this replica has all handed to the catalog
// before goes again once per period of catalog.Periods flush intervals (10
// minutes by default), in the slot every replica agrees on (catalog.Slot);
// a consumer it has not handed over yet goes at the next flush. Alone on
// its store, each hand-over is a read and a check-and-set write of the
// credential's catalog record: with one per interval, 100,000 credentials
// in use would cost 1,700 store writes a second, about what a Vault server
// does in all. Shared, it is a line in one of the replica's 64 inbox
// batches, and the shard's holder merges the slot's uses of all replicas
// with one write. Counts and last-seen times of known consumers lag by up
// to a period and two intervals; FlushIssuance merges everything at once.
func (c *issuanceCounter) catalogDue(credential string, identities []string, now time.Time) bool {
	m := c.catalogMerged[credential]
	if m == nil {
		return true
	}
	for _, id := range identities {
		if _, ok := m.identities[id]; !ok {
			return true
		}
	}
	return catalog.Slot(credential, c.interval, now) != catalog.Slot(credential, c.interval, m.at)
}

// catalogMerge is what this replica last handed to the catalog for one
// credential.
type catalogMerge struct {
	at         time.Time
	identities map[string]struct{}
}

// flushCatalog hands the backlog's due credentials (all of them with all)
// to the consumer catalog; what is not due, or what the catalog could not
// store, stays in the backlog.
func (c *issuanceCounter) flushCatalog(ctx context.Context, all bool) error {
	now := c.now()
	c.forgetOldCatalogMerges(now)
	if len(c.catalogBacklog) == 0 {
		return nil
	}
	identities := make(map[string][]string)
	for k := range c.catalogBacklog {
		identities[k.credential] = append(identities[k.credential], k.caller)
	}
	due := make(map[string]bool, len(identities))
	for cred, ids := range identities {
		due[cred] = all || c.catalogDue(cred, ids, now)
	}
	var uses []catalog.Use
	for _, k := range sortedKeys(c.catalogBacklog) {
		if !due[k.credential] {
			continue
		}
		n := c.catalogBacklog[k]
		uses = append(uses, catalog.Use{CredentialID: k.credential, Identity: k.caller, FirstSeen: n.first, LastSeen: n.last, Count: n.count})
		delete(c.catalogBacklog, k)
	}
	if len(uses) == 0 {
		return nil
	}
	unrecorded, err := c.catalog.Record(ctx, uses)
	failed := make(map[string]bool)
	for _, u := range unrecorded {
		failed[u.CredentialID] = true
		merge(c.catalogBacklog, issuanceKey{u.Identity, u.CredentialID}, issuanceCount{count: u.Count, first: u.FirstSeen, last: u.LastSeen})
	}
	for cred, ok := range due {
		if !ok || failed[cred] {
			continue
		}
		m := c.catalogMerged[cred]
		if m == nil {
			m = &catalogMerge{identities: make(map[string]struct{})}
			c.catalogMerged[cred] = m
		}
		m.at = now
		for _, id := range identities[cred] {
			m.identities[id] = struct{}{}
		}
	}
	if err != nil {
		c.log.ErrorContext(ctx, "consumer catalog not fully updated; the rest is kept for the next flush",
			"kept", len(unrecorded), "err", err)
		return fmt.Errorf("server: consumer catalog: %w", err)
	}
	return nil
}

// forgetOldCatalogMerges drops what this replica remembers of credentials
// nobody asked it for during three periods, so that the memory held
// follows the credentials in use, not every credential ever used.
func (c *issuanceCounter) forgetOldCatalogMerges(now time.Time) {
	for cred, m := range c.catalogMerged {
		if now.Sub(m.at) > 3*catalog.Periods*c.interval {
			delete(c.catalogMerged, cred)
		}
	}
}

func sortedKeys(m map[issuanceKey]*issuanceCount) []issuanceKey {
	keys := make([]issuanceKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].credential != keys[j].credential {
			return keys[i].credential < keys[j].credential
		}
		return keys[i].caller < keys[j].caller
	})
	return keys
}

// catalogIdentity is the identity the consumer catalog records: the
// caller's, except that an open server's callers (DevIdentity/peer:HOST:PORT)
// are one consumer per host, not one per connection.
func catalogIdentity(caller string) string {
	if addr, ok := strings.CutPrefix(caller, DevIdentity+"/peer:"); ok {
		if host, _, err := net.SplitHostPort(addr); err == nil {
			return DevIdentity + "/peer:" + host
		}
	}
	return caller
}

// close stops the periodic flush and writes what is left, for at most
// flushTimeout.
func (c *issuanceCounter) close(ctx context.Context) {
	c.once.Do(func() {
		close(c.stop)
		<-c.stopped
		ctx, cancel := context.WithTimeout(ctx, flushTimeout)
		defer cancel()
		_ = c.flushSome(ctx, true, false) // failures are logged; the holders merge the inboxes
	})
}

// FlushIssuance hands the token issuance counted so far to the audit trail
// and the consumer catalog now — every credential's uses, also those the
// periodic flush puts off (see catalogDue) — merges the catalog's inboxes
// of every shard (also those other replicas hold, whose uses would show
// at their holder's next flush), and returns once they have it. What a sink cannot take is kept for the next flush,
// and the error says so. Without either sink it does nothing. Safe for
// concurrent use; operators and tests use it to see the newest uses in
// ListConsumers without waiting for the interval.
func (s *Server) FlushIssuance(ctx context.Context) error {
	if s.issuance == nil {
		return nil
	}
	return s.issuance.flushSome(ctx, true, true)
}
