// Package node builds one Rotavault server the same way wherever one runs:
// `rotavault serve`, `rotavault dev` and the test harnesses.
//
// The shape is SPIRE's server: small constructors, each opening one part —
// the store, the audit trail, the provider client, the broker, the gRPC
// server, the HTTP endpoints, an owned goroutine — and pushing the part's
// closer onto the Node's stack. Close runs the stack newest first, so
// whatever was opened is closed in reverse order of opening, both when a
// later constructor fails and at shutdown: the gRPC server stops before the
// broker it calls, the broker before the audit trail it writes to, the audit
// trail (which may anchor a lagging head) before the store.
//
// A Node is not safe for concurrent use: one goroutine assembles it and
// closes it. The parts it hands out are safe for concurrent use as their
// own packages say.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/boltstore"
	"github.com/rotavault/rotavault/broker"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/server"
	"github.com/rotavault/rotavault/tracing"
	"github.com/rotavault/rotavault/vaultstore"
)

// Config holds what every part of a node shares.
type Config struct {
	// Logger receives the parts' logs and the closers' failures; nil
	// discards them.
	Logger *slog.Logger
	// Tracing instruments the parts (see package tracing); nil is off, and
	// then nothing is wrapped. Close shuts it down last, after every part
	// whose spans it exports.
	Tracing *tracing.Tracing
}

// Node is a server being assembled, running, or closed. Its zero value is
// not usable; call New.
type Node struct {
	log     *slog.Logger
	tracing *tracing.Tracing
	closers []closer
	// failed receives the first error of a part that stopped serving on its
	// own (a listener failing); Wait returns it.
	failed chan error
}

type closer struct {
	what string
	fn   func(context.Context) error
}

// New returns an empty node.
func New(cfg Config) *Node {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := &Node{log: log, tracing: cfg.Tracing, failed: make(chan error, 1)}
	if cfg.Tracing.Enabled() {
		n.OnClose("tracing", cfg.Tracing.Shutdown)
	}
	return n
}

// OnClose pushes fn onto the closer stack: Close calls it before every
// closer pushed earlier and after every closer pushed later.
func (n *Node) OnClose(what string, fn func(context.Context) error) {
	n.closers = append(n.closers, closer{what: what, fn: fn})
}

// Close closes every part opened so far, newest first. ctx bounds the
// graceful stops (servers waiting for calls in flight); a part whose
// graceful stop runs out of time is stopped hard. Each failure is logged
// and all are returned joined. Close may be called again: it closes what
// was opened since.
func (n *Node) Close(ctx context.Context) error {
	var errs []error
	for i := len(n.closers) - 1; i >= 0; i-- {
		c := n.closers[i]
		if err := c.fn(ctx); err != nil {
			n.log.Error("close failed", "what", c.what, "err", err)
			errs = append(errs, fmt.Errorf("close %s: %w", c.what, err))
		}
	}
	n.closers = nil
	return errors.Join(errs...)
}

// Wait blocks until ctx ends (nil) or a serving part fails on its own (its
// error). It does not close anything.
func (n *Node) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-n.failed:
		return err
	}
}

func (n *Node) fail(err error) {
	select {
	case n.failed <- err:
	default: // the first failure is what Wait reports
	}
}

// closeFunc adapts a Close method to a closer.
func closeFunc(fn func() error) func(context.Context) error {
	return func(context.Context) error { return fn() }
}

// OpenEmbeddedStore opens the embedded store at path (see OpenEmbedded).
func (n *Node) OpenEmbeddedStore(path string, key boltstore.Key, opts boltstore.Options) (*boltstore.Store, error) {
	st, err := OpenEmbedded(path, key, opts)
	if err != nil {
		return nil, err
	}
	n.OnClose("store", closeFunc(st.Close))
	return st, nil
}

// OpenEmbedded opens the embedded store at path, explaining the two
// refusals an operator meets: a store held by a running server, and a store
// sealed under another key.
func OpenEmbedded(path string, key boltstore.Key, opts boltstore.Options) (*boltstore.Store, error) {
	st, err := boltstore.Open(path, key, opts)
	switch {
	case errors.Is(err, boltstore.ErrLocked):
		return nil, fmt.Errorf("the store %s is in use by a running server; stop it first: %w", path, err)
	case errors.Is(err, boltstore.ErrUnknownKey):
		return nil, fmt.Errorf("the store %s is sealed under another key: give its key with --store-key-file (and older ones with --store-previous-key-file): %w", path, err)
	case err != nil:
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return st, nil
}

// OpenVaultStore connects to the Vault store.
func (n *Node) OpenVaultStore(ctx context.Context, cfg vaultstore.Config) (*vaultstore.Store, error) {
	st, err := vaultstore.New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	n.OnClose("store", closeFunc(st.Close))
	return st, nil
}

// OpenAudit opens the audit trail. Its closer runs before the store's
// (opened earlier): closing may anchor a lagging head in the store.
func (n *Node) OpenAudit(ctx context.Context, cfg audit.Config) (*audit.FileLog, error) {
	al, err := audit.Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	n.OnClose("audit trail", closeFunc(al.Close))
	return al, nil
}

// NewProvider returns the OAuth client the broker calls providers with,
// its requests traced. It holds nothing to close: idle connections time out
// on their own.
func (n *Node) NewProvider(opts ...provider.Option) *provider.Client {
	if n.tracing.Enabled() {
		opts = append(opts, provider.WithTransport(n.tracing.Transport))
	}
	return provider.New(nil, opts...)
}

// NewBroker starts the rotation logic over cfg's store (its calls traced),
// provider and auditor.
func (n *Node) NewBroker(ctx context.Context, cfg broker.Config, opts ...option.Option) (*broker.Broker, error) {
	cfg.Store = n.tracing.Store(cfg.Store)
	b, err := broker.New(ctx, cfg, opts...)
	if err != nil {
		return nil, err
	}
	n.OnClose("broker", closeFunc(b.Close))
	return b, nil
}

// ServeGRPC builds the gRPC server from cfg and serves it on lis until
// Close, which shuts it down gracefully within Close's ctx (watch streams
// end with UNAVAILABLE) and waits for Serve to return. Serve failing on its
// own is what Wait returns.
func (n *Node) ServeGRPC(cfg server.Config, lis net.Listener) *server.Server {
	cfg.ExtraOptions = append(n.tracing.GRPCServerOptions(), cfg.ExtraOptions...)
	srv := server.New(cfg)
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := srv.Serve(lis); err != nil {
			n.fail(fmt.Errorf("serve: %w", err))
		}
	}()
	n.OnClose("gRPC server", func(ctx context.Context) error {
		srv.Shutdown(ctx)
		<-served
		return nil
	})
	return srv
}

// ServeHTTP serves h on lis with server.NewHTTPServer's timeouts and
// server.LimitHTTPListener's connection bounds until Close, which shuts it
// down gracefully within Close's ctx, then cuts off what remains, and
// waits for it. A failure to serve is logged under what:
// HTTP endpoints are not worth stopping the gRPC service for.
//
// Requests are traced, except the probes and scrapes infrastructure sends
// every few seconds, which would bury the OAuth callbacks.
func (n *Node) ServeHTTP(what string, h http.Handler, lis net.Listener) {
	hs := server.NewHTTPServer(n.tracing.HTTPHandler(h, what, notProbe), n.log)
	lis = server.LimitHTTPListener(lis, n.log)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error(what+" stopped", "err", err)
		}
	}()
	n.OnClose(what, func(ctx context.Context) error {
		if err := hs.Shutdown(ctx); err != nil {
			_ = hs.Close()
		}
		<-done
		return nil
	})
}

// notProbe tells requests worth a trace from health probes and metric
// scrapes.
func notProbe(r *http.Request) bool {
	switch r.URL.Path {
	case "/healthz", "/readyz", "/metrics":
		return false
	}
	return true
}

// Go runs fn in a goroutine the node owns, with a ctx derived from ctx:
// Close cancels it and waits for fn to return.
func (n *Node) Go(ctx context.Context, what string, fn func(ctx context.Context)) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(ctx)
	}()
	n.OnClose(what, func(context.Context) error {
		cancel()
		<-done
		return nil
	})
}
