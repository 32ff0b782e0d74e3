package node_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"slices"
	"testing"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/boltstore"
	"github.com/rotavault/rotavault/broker"
	"github.com/rotavault/rotavault/internal/node"
	"github.com/rotavault/rotavault/server"
)

func TestCloseRunsClosersNewestFirstAndOnlyOnce(t *testing.T) {
	n := node.New(node.Config{})
	var order []string
	for _, what := range []string{"store", "audit", "broker"} {
		n.OnClose(what, func(context.Context) error { order = append(order, what); return nil })
	}
	boom := errors.New("boom")
	n.OnClose("server", func(context.Context) error { order = append(order, "server"); return boom })
	if err := n.Close(context.Background()); !errors.Is(err, boom) {
		t.Fatalf("Close = %v, want the server's failure", err)
	}
	if want := []string{"server", "broker", "audit", "store"}; !slices.Equal(order, want) {
		t.Fatalf("closed %v, want %v", order, want)
	}
	if err := n.Close(context.Background()); err != nil || len(order) != 4 {
		t.Fatalf("second Close = %v and closed %v: want nothing closed twice", err, order)
	}
}

// A constructor failing half way leaves nothing open once the node is
// closed: the store opened before a refused audit trail is released (a
// held embedded store refuses a second open with ErrLocked).
func TestCloseAfterAFailedConstructorReleasesWhatWasOpened(t *testing.T) {
	dir := t.TempDir()
	key, err := boltstore.GenerateKeyFile(filepath.Join(dir, "store.key"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "rotavault.db")
	n := node.New(node.Config{})
	st, err := n.OpenEmbeddedStore(path, key, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.OpenAudit(context.Background(), audit.Config{Path: filepath.Join(dir, "missing", "audit.jsonl"), Store: st}); err == nil {
		t.Fatal("audit trail in a missing directory opened")
	}
	if _, err := node.OpenEmbedded(path, key, boltstore.Options{}); !errors.Is(err, boltstore.ErrLocked) {
		t.Fatalf("second open while the node holds the store: %v, want ErrLocked", err)
	}
	if err := n.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	again, err := node.OpenEmbedded(path, key, boltstore.Options{})
	if err != nil {
		t.Fatalf("open after Close: %v", err)
	}
	_ = again.Close()
}

// Wait reports a gRPC server that stopped serving on its own, and Close
// still shuts everything down after it.
func TestWaitReportsAServerThatStoppedServing(t *testing.T) {
	dir := t.TempDir()
	key, err := boltstore.GenerateKeyFile(filepath.Join(dir, "store.key"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	n := node.New(node.Config{})
	st, err := n.OpenEmbeddedStore(filepath.Join(dir, "rotavault.db"), key, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	al, err := n.OpenAudit(ctx, audit.Config{Path: filepath.Join(dir, "audit.jsonl"), Store: st})
	if err != nil {
		t.Fatal(err)
	}
	b, err := n.NewBroker(ctx, broker.Config{Store: st, Provider: n.NewProvider(), Auditor: al})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_ = lis.Close() // Serve fails at once
	n.ServeGRPC(server.Config{Broker: b, Credentials: b.Credentials(), Flows: b.Flows(), Catalog: b.Catalog()}, lis)
	if err := n.Wait(ctx); err == nil {
		t.Fatal("Wait = nil for a server whose listener is closed")
	}
	if err := n.Close(ctx); err != nil {
		t.Fatal(err)
	}
}
