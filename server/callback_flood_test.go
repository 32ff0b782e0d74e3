package server

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/memstore"
)

// flowReadCountingStore counts reads of reauthentication flows.
type flowReadCountingStore struct {
	store.Store
	flowReads atomic.Int64
}

func (s *flowReadCountingStore) Get(ctx context.Context, key string) (store.Record, error) {
	if strings.HasPrefix(key, "flows/") {
		s.flowReads.Add(1)
	}
	return s.Store.Get(ctx, key)
}

// The callback answers anyone: a flood of well-formed states must not turn
// into as many store reads (Vault's, shared with every rotation). Past a
// small burst, requests are refused before reaching the store.
func TestCallbackFloodIsBoundedBeforeTheStore(t *testing.T) {
	st := &flowReadCountingStore{Store: memstore.New()}
	b, err := broker.New(context.Background(), broker.Config{Store: st, Provider: provider.New(nil), Auditor: &recordingAuditor{}},
		option.WithSchedulerInterval(time.Hour), option.WithIntrospectionInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	srv := httptest.NewServer(NewHTTPMux(HTTPConfig{Callback: b.Flows()}))
	t.Cleanup(srv.Close)

	const requests = 200
	state := strings.Repeat("A", 43) // well formed, never issued
	start := time.Now()
	statuses := map[int]int{}
	for range requests {
		resp, err := http.Get(srv.URL + CallbackPath + "?state=" + state + "&code=c")
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		statuses[resp.StatusCode]++
		if resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get("Retry-After") == "" {
			t.Error("a refused callback carries no Retry-After")
		}
	}
	elapsed := time.Since(start)
	// The documented bound: a burst of 20, then 10 a second.
	limit := int64(20 + int(10*elapsed.Seconds()) + 1)
	if reads := st.flowReads.Load(); reads > limit {
		t.Fatalf("%d anonymous callbacks in %s made %d flow reads, want at most %d (statuses %v)", requests, elapsed, reads, limit, statuses)
	}
	if statuses[http.StatusTooManyRequests] == 0 || statuses[http.StatusBadRequest] == 0 {
		t.Fatalf("statuses %v: want unknown states answered, and the flood refused", statuses)
	}
}
