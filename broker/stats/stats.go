// Package stats counts what a replica's rotation core did since it
// started, for tests and operators (package metrics exports them).
package stats

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/catalog"
	"github.com/rotavault/rotavault/broker/internal/lease"
	"github.com/rotavault/rotavault/broker/notice"
)

// Counters are the rotation core's counters. Safe for concurrent use; the
// zero value is ready.
type Counters struct {
	ClaimWaits             atomic.Int64
	CacheHits, CacheMisses atomic.Int64
	// RotationsHeldBack counts calls the rotation floor kept from a refresh
	// (see pacing.RotationInterval).
	RotationsHeldBack atomic.Int64
	// CutoffWaits counts calls that waited for a rotation because the
	// token was past its cutoff; OffScheduleRotations the rotations this
	// replica announced to the others (cutoff.go).
	CutoffWaits, OffScheduleRotations atomic.Int64
	Refreshes                         atomic.Int64
	refreshFailures                   [numRefreshFailures]atomic.Int64
	// Discoveries and DiscoveryFailures count metadata fetches.
	Discoveries, DiscoveryFailures atomic.Int64
	// Scheduled is how many credentials the scheduler keeps track of,
	// as of its last tick.
	Scheduled atomic.Int64
	// revocations is guarded by revocationsMu: reasons are few, revocations
	// rare.
	revocationsMu sync.Mutex
	revocations   map[notice.RevocationReason]int64
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
	// RefreshFailures counts Refreshes this replica gave up on, by reason:
	// provider_unavailable, store_unavailable, reauthentication_required
	// (the family was revoked), client_rejected, other.
	RefreshFailures map[string]int64
	// Revocations counts families this replica marked revoked, by reason.
	Revocations map[notice.RevocationReason]int64
	// Discoveries counts provider metadata documents this replica fetched
	// (for --issuer); DiscoveryFailures the fetches that failed or were
	// refused (too large, another issuer, an insecure endpoint).
	Discoveries, DiscoveryFailures int64
	// Scheduled counts the credentials the scheduler keeps a place for, as
	// of its last tick: those with a time to look at them again (or a
	// refresh in flight). A credential gets its place at the first tick
	// after it was loaded (loading wakes it); one never due by time alone
	// (no access token, not active) has none.
	Scheduled int64
	// NoticeLogReadAt is when this replica last read the shared notice log
	// successfully: how current its view of the store is.
	NoticeLogReadAt time.Time
	// Catalog is the consumer catalog's work: inbox batches written,
	// records merged (package catalog).
	Catalog catalog.Stats
	// Duties are this replica's share of the duties shared among replicas
	// (broker/duties.go).
	Duties lease.Stats
	// Loading is the background load of the stored credentials since
	// start (broker/loader.go).
	Loading Loading
}

// Loading is the progress of a replica's background load of the stored
// credentials.
type Loading struct {
	// Listed says the credentials were listed: ToLoad is known.
	Listed bool
	// ToLoad counts the credentials the store held at start; Loaded those
	// the loader has loaded (or found deleted) so far.
	ToLoad, Loaded int64
	// Failures counts loads (and listings) that failed and were retried;
	// Shared the loads a call waited for instead of reading again.
	Failures, Shared int64
}

// Snapshot returns the counters, with the consumer catalog's and the
// notice log's last read, which their parts count.
func (m *Counters) Snapshot(cat catalog.Stats, noticeLogReadAt time.Time) Stats {
	s := Stats{
		ClaimWaits: m.ClaimWaits.Load(), ConsumerTokensDropped: cat.DroppedTokens, Catalog: cat,
		CacheHits: m.CacheHits.Load(), CacheMisses: m.CacheMisses.Load(), Refreshes: m.Refreshes.Load(),
		RotationsHeldBack: m.RotationsHeldBack.Load(),
		CutoffWaits:       m.CutoffWaits.Load(), OffScheduleRotations: m.OffScheduleRotations.Load(),
		Discoveries: m.Discoveries.Load(), DiscoveryFailures: m.DiscoveryFailures.Load(),
		Scheduled:       m.Scheduled.Load(),
		RefreshFailures: make(map[string]int64, numRefreshFailures),
		Revocations:     make(map[notice.RevocationReason]int64),
		NoticeLogReadAt: noticeLogReadAt,
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

// CountRefresh records how a refresh this replica ran ended.
func (m *Counters) CountRefresh(err error) {
	if err == nil {
		m.Refreshes.Add(1)
		return
	}
	kind := failOther
	var ue *brokererr.UnavailableError
	switch {
	case errors.As(err, &ue) && ue.Component == brokererr.ComponentProvider:
		kind = failProviderUnavailable
	case errors.As(err, &ue):
		kind = failStoreUnavailable
	case errors.Is(err, brokererr.ErrReauthRequired):
		kind = failReauthRequired
	case errors.Is(err, brokererr.ErrClientRejected):
		kind = failClientRejected
	}
	m.refreshFailures[kind].Add(1)
}

// CountRevocation records a family this replica marked revoked.
func (m *Counters) CountRevocation(r notice.RevocationReason) {
	m.revocationsMu.Lock()
	defer m.revocationsMu.Unlock()
	if m.revocations == nil {
		m.revocations = make(map[notice.RevocationReason]int64)
	}
	m.revocations[r]++
}
