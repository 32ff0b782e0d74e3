package metrics_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/metrics"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store/memstore"
)

type discardAudit struct{}

func (discardAudit) Record(context.Context, audit.Event) error { return nil }

// /metrics needs no credentials, and each census behind
// rotavault_credentials lists every credential in the store: against
// `serve` with 20,000 credentials, 2,000 scrapes from 64 loops cost 88 CPU
// seconds and 42,000 store listings. However many scrapes arrive, the store
// is listed at most censusBurst times and then once a second.
func TestScrapeFloodListsTheStoreAtMostOnceASecond(t *testing.T) {
	ctx := context.Background()
	mx := metrics.New()
	b, err := broker.New(ctx, broker.Config{Store: mx.Store(memstore.New()), Provider: mx.Provider(provider.New(nil)), Auditor: discardAudit{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	for i := range 3 {
		if _, err := b.Credentials().Create(ctx, fmt.Sprintf("c%d", i), credspec.Spec{
			ProviderKind: credspec.ProviderOAuth2, TokenURL: "https://idp.example/token", ClientID: "app", Scopes: []string{"offline_access"},
		}); err != nil {
			t.Fatal(err)
		}
	}
	mx.WatchBroker(b, b.Credentials())
	before := listings(t, mx)

	start := time.Now()
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for range 20 {
				if _, err := mx.Registry().Gather(); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)

	// 1,280 scrapes; 20 censuses of burst, one a second after.
	if got, most := listings(t, mx)-before, 20+int(took/time.Second)+1; got > most {
		t.Errorf("1,280 scrapes in %v listed the store %d times, want at most %d", took, got, most)
	}
	if got := credentialGauge(t, mx); got != 3 {
		t.Errorf("rotavault_credentials summed = %v after the flood, want 3 (the last census served)", got)
	}
}

// listings counts the store's list_page calls so far.
func listings(t *testing.T, mx *metrics.Metrics) int {
	t.Helper()
	families, err := mx.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range families {
		if f.GetName() != "rotavault_store_request_duration_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "operation" && l.GetValue() == "list_page" {
					n += int(m.GetHistogram().GetSampleCount())
				}
			}
		}
	}
	return n
}

func credentialGauge(t *testing.T, mx *metrics.Metrics) float64 {
	t.Helper()
	families, err := mx.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() == "rotavault_credentials" {
			for _, m := range f.GetMetric() {
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}
