package client_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/rotavault/rotavault/client"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// TestPublishedServiceConfigRetriesAsTheClient checks the gRPC service
// config published for clients in other languages
// (clients/service-config.json): gRPC accepts it, it names methods that
// exist, and its retry policy is the Go client's — the same attempts and
// backoff, UNAVAILABLE and ABORTED retried — on the calls the Go client
// retries (GetAccessToken, and the watch's reconnection).
func TestPublishedServiceConfigRetriesAsTheClient(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "clients", "service-config.json"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(string(raw)))
	if err != nil {
		t.Fatalf("gRPC refuses the service config: %v", err)
	}
	_ = conn.Close()

	var cfg struct {
		MethodConfig []struct {
			Name []struct {
				Service, Method string
			}
			RetryPolicy struct {
				MaxAttempts          int
				InitialBackoff       string
				MaxBackoff           string
				BackoffMultiplier    float64
				RetryableStatusCodes []string
			}
		}
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.MethodConfig) != 1 {
		t.Fatalf("want one method config, got %d", len(cfg.MethodConfig))
	}
	mc := cfg.MethodConfig[0]
	services := rotavaultv1.File_rotavault_v1_token_vault_proto.Services()
	var methods []string
	for _, n := range mc.Name {
		s := services.ByName(protoreflect.FullName(n.Service).Name())
		if s == nil || string(s.FullName()) != n.Service || s.Methods().ByName(protoreflect.Name(n.Method)) == nil {
			t.Errorf("the service config names %s/%s, which the protos do not define", n.Service, n.Method)
		}
		methods = append(methods, n.Method)
	}
	if want := []string{"GetAccessToken", "WatchRevocations"}; !slices.Equal(methods, want) {
		t.Errorf("retried methods %v, want %v (never a call that changes something)", methods, want)
	}
	rp := mc.RetryPolicy
	duration := func(s string) time.Duration {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("backoff %q: %v", s, err)
		}
		return d
	}
	if rp.MaxAttempts != client.DefaultMaxAttempts || duration(rp.InitialBackoff) != client.DefaultBackoff ||
		duration(rp.MaxBackoff) != client.DefaultMaxBackoff || rp.BackoffMultiplier != 2 {
		t.Errorf("retry policy %+v, want the Go client's: %d attempts, backoff %s doubling to %s",
			rp, client.DefaultMaxAttempts, client.DefaultBackoff, client.DefaultMaxBackoff)
	}
	if !slices.Equal(rp.RetryableStatusCodes, []string{"UNAVAILABLE", "ABORTED"}) {
		t.Errorf("retried codes %v, want UNAVAILABLE and ABORTED", rp.RetryableStatusCodes)
	}
}
