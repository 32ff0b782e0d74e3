// Package alerttest evaluates deploy/prometheus-rules.yaml with
// Prometheus's own rule parser and PromQL engine against scrapes of a real
// Rotavault broker's /metrics: healthy, and after a revocation.
package alerttest

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/util/teststorage"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/boltstore"
	"github.com/rotavault/rotavault/broker"
	"github.com/rotavault/rotavault/broker/credspec"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/metrics"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/providersim"
	"github.com/rotavault/rotavault/server"
)

const rulesFile = "../../deploy/prometheus-rules.yaml"

// rotavault is a broker over the embedded store and the provider
// simulator, wired to metrics as `rotavault serve` wires them, with
// /metrics served over loopback HTTP.
type rotavault struct {
	b          *broker.Broker
	sim        *providersim.Server
	metricsURL string
	// vault is the token service of a gRPC server over b, its metrics on
	// the same registry, as serve has it.
	vault rotavaultv1.TokenVaultServiceClient
}

func start(t *testing.T) *rotavault {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	key, err := boltstore.GenerateKeyFile(filepath.Join(dir, "store.key"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := boltstore.Open(filepath.Join(dir, "rotavault.db"), key, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	al, err := audit.Open(ctx, audit.Config{Path: filepath.Join(dir, "audit.jsonl"), Store: st})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = al.Close() })
	sim, err := providersim.Start(providersim.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	sim.AddClient(providersim.Client{ID: "rotavault-app", Secret: "app-secret"})
	mx := metrics.New()
	b, err := broker.New(ctx, broker.Config{Store: mx.Store(st), Provider: mx.Provider(provider.New(nil)), Auditor: al})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	mx.WatchBroker(b, b.Credentials())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: mx.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(lis) }()
	t.Cleanup(func() { _ = hs.Close() })
	grpcLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(server.Config{Broker: b, Credentials: b.Credentials(), Flows: b.Flows(), Catalog: b.Catalog(), Registerer: mx.Registry()})
	go func() { _ = srv.Serve(grpcLis) }()
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	conn, err := grpc.NewClient(grpcLis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &rotavault{b: b, sim: sim, metricsURL: "http://" + lis.Addr().String() + "/metrics", vault: rotavaultv1.NewTokenVaultServiceClient(conn)}
}

// activate registers a credential and installs a token family.
func (r *rotavault) activate(t *testing.T, id string) {
	t.Helper()
	ctx := context.Background()
	spec := credspec.Spec{ProviderKind: credspec.ProviderSalesforce, BaseURL: r.sim.URL(), ClientID: "rotavault-app", ClientSecret: "app-secret",
		Scopes: []string{"api", "refresh_token"}}
	if _, err := r.b.Credentials().Create(ctx, id, spec); err != nil {
		t.Fatal(err)
	}
	rt, err := r.sim.IssueRefreshToken("rotavault-app", spec.Scopes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.b.ImportRefreshToken(ctx, id, rt); err != nil {
		t.Fatal(err)
	}
}

// scrape reads /metrics as Prometheus does.
func (r *rotavault) scrape(t *testing.T) map[string]*dtoFamily {
	t.Helper()
	resp, err := http.Get(r.metricsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	return families
}

// firing loads a scrape taken every 15 s for the past hour (up = 1):
// before until `since` ago, then after (counters and gauges as each was),
// and evaluates every alerting rule at now the way the rule manager does
// with `for`: the expression must hold at every evaluation over the last
// `for`.
func firing(t *testing.T, before, after map[string]*dtoFamily, since time.Duration) []string {
	t.Helper()
	st := teststorage.New(t)
	now := time.Now()
	const interval = 15 * time.Second
	app := st.Appender(context.Background())
	for ts := now.Add(-time.Hour); !ts.After(now); ts = ts.Add(interval) {
		families := before
		if !ts.Before(now.Add(-since)) {
			families = after
		}
		for _, s := range samples(families) {
			if _, err := app.Append(0, s.labels, ts.UnixMilli(), s.value); err != nil {
				t.Fatal(err)
			}
		}
		up := labels.FromStrings("__name__", "up", "job", "rotavault", "instance", "replica-1")
		if _, err := app.Append(0, up, ts.UnixMilli(), 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := app.Commit(); err != nil {
		t.Fatal(err)
	}
	p := parser.NewParser(parser.Options{})
	groups, errs := rulefmt.ParseFile(rulesFile, false, model.UTF8Validation, p, nil)
	if len(errs) > 0 {
		t.Fatalf("%s: %v", rulesFile, errs)
	}
	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 1e6, Timeout: time.Minute, LookbackDelta: 5 * time.Minute})
	var fired []string
	for _, g := range groups.Groups {
		for _, rule := range g.Rules {
			if rule.Alert == "" {
				continue
			}
			hold := time.Duration(rule.For)
			q, err := engine.NewRangeQuery(context.Background(), st, nil, rule.Expr, now.Add(-hold), now, interval)
			if err != nil {
				t.Fatalf("%s: %v", rule.Alert, err)
			}
			res := q.Exec(context.Background())
			if res.Err != nil {
				t.Fatalf("%s: %v", rule.Alert, res.Err)
			}
			m, err := res.Matrix()
			if err != nil {
				t.Fatalf("%s: %v", rule.Alert, err)
			}
			steps := int(hold/interval) + 1
			for _, series := range m {
				if len(series.Floats) >= steps {
					fired = append(fired, rule.Alert)
					break
				}
			}
			q.Close()
		}
	}
	slices.Sort(fired)
	return fired
}

func TestAlertRulesOnARealScrape(t *testing.T) {
	r := start(t)
	r.activate(t, "acme")
	r.activate(t, "globex")

	healthy := r.scrape(t)
	if got := firing(t, healthy, healthy, 0); len(got) != 0 {
		t.Errorf("alerts firing on a healthy server: %v", got)
	}

	// The first revocation since the server started.
	if _, err := r.b.RevokeCredential(context.Background(), "acme", "suspected theft"); err != nil {
		t.Fatal(err)
	}
	revoked := r.scrape(t)
	if got := firing(t, healthy, revoked, 2*time.Minute); !slices.Equal(got, []string{"RotavaultCredentialRevoked"}) {
		t.Errorf("alerts firing after the first revocation: %v, want [RotavaultCredentialRevoked]", got)
	}

	// A consumer keeps asking for the revoked credential: refused, no
	// refresh runs, and the rule on the refusals' increase fires.
	if _, err := r.vault.GetAccessToken(context.Background(), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("GetAccessToken on the revoked family: %v, want FAILED_PRECONDITION", err)
	}
	refused := r.scrape(t)
	want := []string{"RotavaultCredentialRevoked", "RotavaultReauthenticationRequired"}
	if got := firing(t, revoked, refused, 2*time.Minute); !slices.Equal(got, want) {
		t.Errorf("alerts firing after a consumer was refused: %v, want %v", got, want)
	}
	// Ten minutes later without another refusal, the increase is gone.
	if got := firing(t, revoked, refused, 15*time.Minute); !slices.Equal(got, []string{"RotavaultCredentialRevoked"}) {
		t.Errorf("alerts firing 15 minutes after the last refusal: %v, want [RotavaultCredentialRevoked]", got)
	}
}

type dtoFamily = dto.MetricFamily

type sample struct {
	labels labels.Labels
	value  float64
}

// samples flattens counters and gauges (histograms are not alerted on
// here, but their _count series are).
func samples(families map[string]*dtoFamily) []sample {
	var out []sample
	for name, f := range families {
		for _, m := range f.GetMetric() {
			b := labels.NewBuilder(labels.EmptyLabels())
			for _, lp := range m.GetLabel() {
				b.Set(lp.GetName(), lp.GetValue())
			}
			b.Set("job", "rotavault")
			b.Set("instance", "replica-1")
			add := func(metric string, v float64) {
				b.Set("__name__", metric)
				out = append(out, sample{labels: b.Labels(), value: v})
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				add(name, m.GetCounter().GetValue())
			case dto.MetricType_GAUGE:
				add(name, m.GetGauge().GetValue())
			case dto.MetricType_HISTOGRAM:
				add(name+"_count", float64(m.GetHistogram().GetSampleCount()))
				add(name+"_sum", m.GetHistogram().GetSampleSum())
			}
		}
	}
	return out
}
