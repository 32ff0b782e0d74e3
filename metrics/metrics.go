// Package metrics exposes Rotavault's Prometheus metrics: the broker's
// counters, read at scrape time, and latency histograms of the calls it
// makes to the store and to providers, measured by wrapping them.
//
// Nothing here is on the cached GetAccessToken path beyond the broker's own
// atomic counters: a scrape reads them, no call updates a metric vector.
package metrics

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/time/rate"

	"github.com/rotavault/rotavault/broker"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/stats"
	"github.com/rotavault/rotavault/internal/version"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store"
)

const namespace = "rotavault"

// Metrics holds one registry and the instruments recorded into it.
type Metrics struct {
	reg             *prometheus.Registry
	storeLatency    *prometheus.HistogramVec
	providerLatency *prometheus.HistogramVec
}

// New returns metrics in a fresh registry, with the Go runtime and process
// collectors and rotavault_build_info.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildInfo(version.Get()))
	m := &Metrics{
		reg: reg,
		storeLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "store", Name: "request_duration_seconds",
			Help:    "Latency of store calls (the embedded store or Vault), by operation and result.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"operation", "result"}),
		providerLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "provider", Name: "request_duration_seconds",
			Help:    "Latency of calls to OAuth providers, by operation and outcome (ok, rejected, not_processed, unknown, error).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"operation", "outcome"}),
	}
	reg.MustRegister(m.storeLatency, m.providerLatency)
	return m
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Registry is where further collectors go.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// BrokerStats is what the metrics read of the rotation logic at each
// scrape; *broker.Broker is one.
type BrokerStats interface {
	Stats() stats.Stats
	SubscriberCount() int
}

// Census counts the credentials by status; *registry.Credentials
// (broker.Broker.Credentials) is one.
type Census interface {
	Count(ctx context.Context) (map[family.Status]int, error)
}

// WatchBroker registers the broker's counters, read from b.Stats at each
// scrape, and the credentials gauge, counted by census.
func (m *Metrics) WatchBroker(b BrokerStats, census Census) {
	m.reg.MustRegister(&brokerCollector{b: b, census: census, censusRate: rate.NewLimiter(censusRate, censusBurst), now: time.Now})
}

// WatchVaultNodes registers rotavault_vault_node_changes_total, read from
// changes (vaultstore.Store.NodeChanges) at each scrape.
func (m *Metrics) WatchVaultNodes(changes func() int64) {
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "vault", Name: "node_changes_total",
		Help: "How often the Vault store moved to another node of the Vault cluster (--vault-addr with several nodes): the node it used was down, sealed, without an active node or redirecting during an election.",
	}, func() float64 { return float64(changes()) }))
}

var (
	refreshesDesc = prometheus.NewDesc(namespace+"_refreshes_total",
		"Refreshes this replica completed: the provider rotated the family and the new refresh token was stored.", nil, nil)
	refreshFailuresDesc = prometheus.NewDesc(namespace+"_refresh_failures_total",
		"Refreshes this replica gave up on, by reason.", []string{"reason"}, nil)
	revocationsDesc = prometheus.NewDesc(namespace+"_revocations_total",
		"Token families this replica marked revoked, by reason.", []string{"reason"}, nil)
	cacheHitsDesc = prometheus.NewDesc(namespace+"_access_token_cache_hits_total",
		"GetAccessToken calls answered from the cached access token.", nil, nil)
	cacheMissesDesc = prometheus.NewDesc(namespace+"_access_token_cache_misses_total",
		"GetAccessToken calls that needed a refresh, a wait for one, or the store.", nil, nil)
	rotationsHeldBackDesc = prometheus.NewDesc(namespace+"_rotations_held_back_total",
		"GetAccessToken calls that wanted a refresh the rotation floor did not allow yet (one refresh per credential per max(half the token lifetime, 5 s)); they got the current token.", nil, nil)
	cutoffWaitsDesc = prometheus.NewDesc(namespace+"_cutoff_waits_total",
		"GetAccessToken calls that found the cached access token unexpired but past its serving cutoff (a replica may have rotated it at a provider that kills the previous access token) and waited for the rotation instead.", nil, nil)
	offScheduleDesc = prometheus.NewDesc(namespace+"_off_schedule_rotations_total",
		"Rotations this replica made before the previous access token's cutoff and announced to the other replicas through the notice log.", nil, nil)
	discoveriesDesc = prometheus.NewDesc(namespace+"_provider_metadata_fetches_total",
		"Provider metadata documents fetched for credentials with an issuer (at creation, and hourly).", nil, nil)
	discoveryFailuresDesc = prometheus.NewDesc(namespace+"_provider_metadata_fetch_failures_total",
		"Provider metadata fetches that failed or were refused (larger than 64 KiB, another issuer, an insecure endpoint); the stored metadata is kept.", nil, nil)
	claimWaitsDesc = prometheus.NewDesc(namespace+"_claim_waits_total",
		"Waits for a refresh another replica claimed.", nil, nil)
	subscribersDesc = prometheus.NewDesc(namespace+"_watch_subscribers",
		"Revocation watch streams connected to this replica.", nil, nil)
	droppedDesc = prometheus.NewDesc(namespace+"_consumer_catalog_dropped_tokens_total",
		"Access tokens handed to identities a full consumer catalog could not record.", nil, nil)
	inboxWritesDesc = prometheus.NewDesc(namespace+"_consumer_inbox_batches_written_total",
		"Batches of consumer uses this replica wrote to the catalog inboxes of its store (replicas sharing a store): at most one per duty shard per flush, more only past 64 KiB.", nil, nil)
	inboxFullDesc = prometheus.NewDesc(namespace+"_consumer_inbox_full_uses_total",
		"Consumer uses this replica kept in memory because its inbox of their shard held 16 unmerged batches: the shard's holder is not merging.", nil, nil)
	catalogMergesDesc = prometheus.NewDesc(namespace+"_consumer_catalog_merges_total",
		"Consumer catalog records this replica wrote from inboxes, as the holder of their duty shard.", nil, nil)
	inboxMergedDesc = prometheus.NewDesc(namespace+"_consumer_inbox_batches_merged_total",
		"Inbox batches this replica merged in full into the consumer catalog and deleted.", nil, nil)
	credentialsDesc = prometheus.NewDesc(namespace+"_credentials",
		"Credentials by status (active, revoked, awaiting_reauthentication, unproven), read from the store at a scrape (concurrent scrapes share one count; beyond 20 in a row, at most one a second, the others serve the last); every status is present from the start, so an alert on revoked > 0 fires on the first revocation after a restart. Absent while the last store listing failed.", []string{"status"}, nil)
	noticeLogDesc = prometheus.NewDesc(namespace+"_notice_log_last_read_timestamp_seconds",
		"When this replica last read the shared notice log successfully (0: never); the store's health as this replica sees it.", nil, nil)
	credentialsToLoadDesc = prometheus.NewDesc(namespace+"_credentials_to_load",
		"Credentials the store held when this replica started, which it loads in the background while it serves (absent until they are listed).", nil, nil)
	credentialsLoadedDesc = prometheus.NewDesc(namespace+"_credentials_loaded",
		"Credentials of rotavault_credentials_to_load this replica has loaded; equal when the background load is done.", nil, nil)
	credentialLoadFailuresDesc = prometheus.NewDesc(namespace+"_credential_load_failures_total",
		"Background loads of a credential (or of the list of credentials) that failed, the store being unreachable; each is retried with backoff until it succeeds.", nil, nil)
	dutyShardsDesc = prometheus.NewDesc(namespace+"_duty_shards_owned",
		"Shards (of 64) whose duties this replica does now: introspection, refreshes before an idle timeout, the flow sweep. All 64 alone on a store; 0 while its lease lapsed (the store is unreachable).", nil, nil)
	dutyReplicasDesc = prometheus.NewDesc(namespace+"_duty_replicas",
		"Live replicas sharing the duties, as this replica's last lease write counted them.", nil, nil)
	dutyLeaseWritesDesc = prometheus.NewDesc(namespace+"_duty_lease_writes_total",
		"Writes of the shared duty lease record by this replica, by result: ok, conflict (another replica wrote first), error, held_back (the write bound held it back for a tick).", []string{"result"}, nil)
	dutyHandoversDesc = prometheus.NewDesc(namespace+"_duty_shard_handovers_total",
		"Shards this replica took over from another replica: one that died (after its lease lapsed), stopped, or gave them back when a replica joined.", nil, nil)
)

type brokerCollector struct {
	b      BrokerStats
	census Census

	// A census lists every credential in the store, and /metrics needs no
	// credentials: scrapes as fast as anyone can send them would keep the
	// cores and the store busy (2,000 scrapes at 20,000 credentials cost
	// 88 CPU seconds and 42,000 store listings). So scrapes take their
	// turn (censusMu), a scrape that waited for another's census takes its
	// counts, and beyond censusRate the last counts are served.
	censusMu   sync.Mutex
	censusRate *rate.Limiter
	now        func() time.Time
	counts     map[family.Status]int // the last census's; nil if it failed
	countedAt  time.Time             // when the last census ended
}

// Censuses are at most one a second once a burst of them is spent:
// Prometheus scrapes every 15 s or so, and a person comparing scrapes
// rarely sends twenty in a row.
const (
	censusRate  = 1
	censusBurst = 20
)

func (c *brokerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{refreshesDesc, refreshFailuresDesc, revocationsDesc, cacheHitsDesc, cacheMissesDesc, rotationsHeldBackDesc, cutoffWaitsDesc, offScheduleDesc, discoveriesDesc, discoveryFailuresDesc, claimWaitsDesc, subscribersDesc, droppedDesc, noticeLogDesc, credentialsDesc,
		inboxWritesDesc, inboxFullDesc, catalogMergesDesc, inboxMergedDesc,
		dutyShardsDesc, dutyReplicasDesc, dutyLeaseWritesDesc, dutyHandoversDesc, credentialsToLoadDesc, credentialsLoadedDesc, credentialLoadFailuresDesc} {
		ch <- d
	}
}

func (c *brokerCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.b.Stats()
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(refreshesDesc, s.Refreshes)
	for reason, n := range s.RefreshFailures {
		counter(refreshFailuresDesc, n, reason)
	}
	for reason, n := range s.Revocations {
		counter(revocationsDesc, n, string(reason))
	}
	counter(cacheHitsDesc, s.CacheHits)
	counter(cacheMissesDesc, s.CacheMisses)
	counter(rotationsHeldBackDesc, s.RotationsHeldBack)
	counter(cutoffWaitsDesc, s.CutoffWaits)
	counter(offScheduleDesc, s.OffScheduleRotations)
	counter(discoveriesDesc, s.Discoveries)
	counter(discoveryFailuresDesc, s.DiscoveryFailures)
	counter(claimWaitsDesc, s.ClaimWaits)
	counter(droppedDesc, s.ConsumerTokensDropped)
	counter(inboxWritesDesc, s.Catalog.InboxWrites)
	counter(inboxFullDesc, s.Catalog.InboxFullUses)
	counter(catalogMergesDesc, s.Catalog.Merges)
	counter(inboxMergedDesc, s.Catalog.MergedBatches)
	d := s.Duties
	ch <- prometheus.MustNewConstMetric(dutyShardsDesc, prometheus.GaugeValue, float64(d.Owned))
	ch <- prometheus.MustNewConstMetric(dutyReplicasDesc, prometheus.GaugeValue, float64(d.Members))
	for result, n := range map[string]int64{"ok": d.Writes, "conflict": d.Conflicts, "error": d.Failures, "held_back": d.Throttled} {
		counter(dutyLeaseWritesDesc, n, result)
	}
	counter(dutyHandoversDesc, d.Handovers)
	if l := s.Loading; l.Listed {
		ch <- prometheus.MustNewConstMetric(credentialsToLoadDesc, prometheus.GaugeValue, float64(l.ToLoad))
	}
	ch <- prometheus.MustNewConstMetric(credentialsLoadedDesc, prometheus.GaugeValue, float64(s.Loading.Loaded))
	counter(credentialLoadFailuresDesc, s.Loading.Failures)
	ch <- prometheus.MustNewConstMetric(subscribersDesc, prometheus.GaugeValue, float64(c.b.SubscriberCount()))
	var last float64
	if !s.NoticeLogReadAt.IsZero() {
		last = float64(s.NoticeLogReadAt.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(noticeLogDesc, prometheus.GaugeValue, last)
	for st, n := range c.credentialCounts() {
		ch <- prometheus.MustNewConstMetric(credentialsDesc, prometheus.GaugeValue, float64(n), string(st))
	}
}

// credentialCounts runs a census, or hands out the last one when it ended
// while this scrape waited for it or when censuses are over their rate.
func (c *brokerCollector) credentialCounts() map[family.Status]int {
	arrived := c.now()
	c.censusMu.Lock()
	defer c.censusMu.Unlock()
	if !c.countedAt.IsZero() && (c.countedAt.After(arrived) || !c.censusRate.Allow()) {
		return c.counts
	}
	// Bounded: a scrape must not hang on an unreachable store.
	ctx, cancel := context.WithTimeout(context.Background(), censusTimeout)
	defer cancel()
	counts, err := c.census.Count(ctx)
	if err != nil {
		counts = nil
	}
	c.counts, c.countedAt = counts, c.now()
	return counts
}

// censusTimeout bounds the store listing behind rotavault_credentials, well
// inside Prometheus's default 10s scrape timeout.
const censusTimeout = 5 * time.Second

// Store wraps s so that every call's latency is recorded.
func (m *Metrics) Store(s store.Store) store.Store { return &timedStore{s: s, h: m.storeLatency} }

type timedStore struct {
	s store.Store
	h *prometheus.HistogramVec
}

func (t *timedStore) observe(op string, start time.Time, err error) {
	t.h.WithLabelValues(op, store.ResultOf(err)).Observe(time.Since(start).Seconds())
}

func (t *timedStore) Get(ctx context.Context, key string) (r store.Record, err error) {
	start := time.Now()
	defer func() { t.observe("get", start, err) }()
	return t.s.Get(ctx, key)
}

func (t *timedStore) Put(ctx context.Context, key string, value []byte, expectedVersion uint64) (v uint64, err error) {
	start := time.Now()
	defer func() { t.observe("put", start, err) }()
	return t.s.Put(ctx, key, value, expectedVersion)
}

func (t *timedStore) Delete(ctx context.Context, key string) (err error) {
	start := time.Now()
	defer func() { t.observe("delete", start, err) }()
	return t.s.Delete(ctx, key)
}

func (t *timedStore) List(ctx context.Context, prefix string) (keys []string, err error) {
	start := time.Now()
	defer func() { t.observe("list", start, err) }()
	return t.s.List(ctx, prefix)
}

func (t *timedStore) ListPage(ctx context.Context, prefix, after string, limit int) (keys []string, more bool, err error) {
	start := time.Now()
	defer func() { t.observe("list_page", start, err) }()
	return t.s.ListPage(ctx, prefix, after, limit)
}

// ListingHints is passed on: hints are not store calls, so not timed.
func (t *timedStore) ListingHints(prefix string) func(string, bool) {
	return t.s.ListingHints(prefix)
}

// Provider wraps p so that every provider call's latency and outcome are
// recorded.
func (m *Metrics) Provider(p broker.Provider) broker.Provider {
	return &timedProvider{p: p, h: m.providerLatency}
}

type timedProvider struct {
	p broker.Provider
	h *prometheus.HistogramVec
}

func providerOutcome(err error) string {
	if err == nil {
		return "ok"
	}
	var pe *provider.Error
	if !errors.As(err, &pe) {
		return "error"
	}
	switch pe.Outcome {
	case provider.OutcomeRejected:
		return "rejected"
	case provider.OutcomeNotProcessed:
		return "not_processed"
	case provider.OutcomeUnknown:
		return "unknown"
	default:
		return "error"
	}
}

func (t *timedProvider) observe(op string, start time.Time, err error) {
	t.h.WithLabelValues(op, providerOutcome(err)).Observe(time.Since(start).Seconds())
}

func (t *timedProvider) Refresh(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, refreshToken string) (tok *provider.Token, err error) {
	start := time.Now()
	defer func() { t.observe("refresh", start, err) }()
	return t.p.Refresh(ctx, ep, cc, refreshToken)
}

func (t *timedProvider) ExchangeCode(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, code, redirectURI, codeVerifier string) (tok *provider.Token, err error) {
	start := time.Now()
	defer func() { t.observe("exchange", start, err) }()
	return t.p.ExchangeCode(ctx, ep, cc, code, redirectURI, codeVerifier)
}

// AuthCodeURL makes no call.
func (t *timedProvider) AuthCodeURL(ep provider.Endpoint, cc provider.ClientCredentials, redirectURI, state, codeChallenge string, scopes []string) (string, error) {
	return t.p.AuthCodeURL(ep, cc, redirectURI, state, codeChallenge, scopes)
}

func (t *timedProvider) Revoke(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, token string) (err error) {
	start := time.Now()
	defer func() { t.observe("revoke", start, err) }()
	return t.p.Revoke(ctx, ep, cc, token)
}

func (t *timedProvider) IntrospectToken(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, token string, hint provider.TokenTypeHint) (in provider.Introspection, err error) {
	start := time.Now()
	defer func() { t.observe("introspect", start, err) }()
	return t.p.IntrospectToken(ctx, ep, cc, token, hint)
}

func (t *timedProvider) StartDeviceAuthorization(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, scopes []string) (d *provider.DeviceAuthorization, err error) {
	start := time.Now()
	defer func() { t.observe("device_authorization", start, err) }()
	return t.p.StartDeviceAuthorization(ctx, ep, cc, scopes)
}

func (t *timedProvider) PollDeviceToken(ctx context.Context, ep provider.Endpoint, cc provider.ClientCredentials, deviceCode string) (tok *provider.Token, err error) {
	start := time.Now()
	defer func() { t.observe("device_poll", start, err) }()
	return t.p.PollDeviceToken(ctx, ep, cc, deviceCode)
}

// Discover fetches an issuer's metadata when the wrapped provider can (see
// broker.Discoverer).
func (t *timedProvider) Discover(ctx context.Context, issuer string) (m provider.Metadata, err error) {
	d, ok := t.p.(credspec.Discoverer)
	if !ok {
		return provider.Metadata{}, errors.New("metrics: the wrapped provider client cannot discover metadata")
	}
	start := time.Now()
	defer func() { t.observe("discover", start, err) }()
	return d.Discover(ctx, issuer)
}
