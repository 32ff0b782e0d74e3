package server

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/rotavault/rotavault/broker"
	"github.com/rotavault/rotavault/broker/option"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/memstore"
)

// panickingStore panics on reads of credential records while armed (what
// a handler reads first; the broker's background sweeps read other
// records, and a panic there would end the test process, not a call), with
// a message that stands for internal state a panic could carry.
type panickingStore struct {
	store.Store
	armed atomic.Bool
}

const panicSecret = "internal-state-5f0c2a9e"

func (s *panickingStore) Get(ctx context.Context, key string) (store.Record, error) {
	if s.armed.Load() && strings.HasPrefix(key, "credentials/") {
		panic("store exploded near " + panicSecret)
	}
	return s.Store.Get(ctx, key)
}

// A panic in a handler becomes INTERNAL with a fixed message — nothing of
// the panic reaches the caller — and the server goes on serving.
func TestPanicBecomesInternalWithoutLeakingState(t *testing.T) {
	st := &panickingStore{Store: memstore.New()}
	b, err := broker.New(context.Background(), broker.Config{Store: st, Provider: provider.New(nil), Auditor: &recordingAuditor{}},
		option.WithSchedulerInterval(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	logs := &lockedBuffer{}
	conn := serveLoopback(t, Config{Broker: b, Credentials: b.Credentials(), Flows: b.Flows(), Catalog: b.Catalog(), Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	client := rotavaultv1.NewTokenVaultServiceClient(conn)

	st.armed.Store(true)
	_, err = client.GetAccessToken(testCtx(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
	if s := status.Convert(err); s.Code() != codes.Internal || strings.Contains(s.Message(), panicSecret) || strings.Contains(s.Message(), "exploded") {
		t.Fatalf("panicking call: %v, want INTERNAL without the panic's content", err)
	}
	if !strings.Contains(logs.String(), "panic in handler") {
		t.Fatal("the panic was not logged for the operator")
	}
	st.armed.Store(false)
	_, err = client.GetAccessToken(testCtx(t), &rotavaultv1.GetAccessTokenRequest{CredentialId: "acme"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("call after the panic: %v, want NotFound from a server still serving", err)
	}
}
