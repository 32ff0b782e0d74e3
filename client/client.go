package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// Client gets access tokens from a Rotavault server and caches them per
// credential until their refresh margin or the server's use_until,
// whichever comes first; concurrent callers missing the
// cache share one call to the server. Unless WithoutRevocationWatch is given
// it watches revocation notices in the background and drops a credential's
// cached tokens when its family is revoked or replaced.
//
// Safe for concurrent use. Its zero value is not usable: create it with New
// and stop it with Close.
type Client struct {
	vault rotavaultv1.TokenVaultServiceClient
	opts  options

	// ctx ends at Close; the watch and the shared calls run under it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	entries map[string]*entry
	// epoch changes whenever every cached token is dropped: a call that
	// started before must not cache its answer.
	epoch uint64
	// cursor is the watch's position in the server's notice log; "" until
	// the watch first started (or after the log moved past it). Answers are
	// cached only while it is set: a revocation after it reaches the Client,
	// if need be when the watch reconnects with it.
	cursor string
	// watchStarts counts the watch streams that started; watchStarted is
	// closed and replaced at each start.
	watchStarts  int
	watchStarted chan struct{}
}

// entry is one credential's cache.
type entry struct {
	tok    Token
	cached bool
	// epoch changes whenever the credential's cached token is dropped.
	epoch   uint64
	flights map[flightKey]*flight
}

// flightKey tells apart calls that cannot share an answer.
type flightKey struct {
	minRemaining time.Duration
	// A rejected token's report, by fingerprint or generation.
	rejected           bool
	rejectedBy         string
	rejectedGeneration uint64
}

// flight is one call to the server shared by every caller asking for the
// same thing meanwhile. It runs while somebody waits for it.
type flight struct {
	done    chan struct{}
	tok     Token
	err     error
	waiters int
	// deadline is the latest deadline of its waiters; zero when one of them
	// has none.
	deadline time.Time
	cancel   context.CancelFunc
}

// New returns a Client calling the server through conn, which the caller
// owns and closes after the Client. It starts the revocation watch (see
// WithoutRevocationWatch); New itself does no I/O. It fails on a nil conn or
// an invalid option.
func New(conn grpc.ClientConnInterface, opts ...Option) (*Client, error) {
	if conn == nil {
		return nil, errors.New("client: nil connection")
	}
	o := defaultOptions()
	for _, opt := range opts {
		if err := opt.applyClient(&o); err != nil {
			return nil, err
		}
	}
	if !o.watch && o.onNotice != nil {
		return nil, errors.New("client: WithNoticeHandler needs the revocation watch")
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{
		vault:        rotavaultv1.NewTokenVaultServiceClient(conn),
		opts:         o,
		ctx:          ctx,
		cancel:       cancel,
		entries:      make(map[string]*entry),
		watchStarted: make(chan struct{}),
	}
	if o.watch {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.watch()
		}()
	}
	return c, nil
}

// Close stops the revocation watch and ends the Token calls in flight with
// ErrClosed, and waits for them. It does not close the connection. Later
// calls return ErrClosed; Close itself is idempotent and returns nil.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	return nil
}

// Token returns an access token for credentialID with more than the
// Client's refresh margin (and WithMinRemaining) of lifetime left: from the
// cache, or from the server — one call shared by all the callers missing
// the cache at once (a second one when the server's token turns out to be
// within its margin), retried on UNAVAILABLE as WithMaxAttempts says.
//
// Errors: *ReauthenticationRequiredError (errors.Is
// ErrReauthenticationRequired) when the credential's family is revoked or
// was never installed; ErrClosed; ctx's error; otherwise the server's gRPC
// status error, wrapped (status.Code and status.FromError see it), for
// example NOT_FOUND, INVALID_ARGUMENT, or UNAVAILABLE once the attempts are
// spent.
func (c *Client) Token(ctx context.Context, credentialID string, opts ...TokenOption) (Token, error) {
	var o tokenOptions
	for _, opt := range opts {
		opt.applyToken(&o)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return Token{}, ErrClosed
	}
	e := c.entries[credentialID]
	if e == nil {
		e = &entry{flights: make(map[flightKey]*flight)}
		c.entries[credentialID] = e
	}
	key := flightKey{minRemaining: o.minRemaining}
	switch {
	case o.rejected == nil:
		if e.cached && c.usable(e.tok, o.minRemaining) {
			tok := e.tok
			c.mu.Unlock()
			return tok, nil
		}
		if e.cached {
			// It is within its margin: ask for a token that is not, so the
			// server refreshes if its own is as old.
			key.minRemaining = max(key.minRemaining, c.margin(e.tok))
		}
	case e.cached && !names(*o.rejected, e.tok) && c.usable(e.tok, o.minRemaining):
		// Somebody got a newer token since: that is the server's answer.
		tok := e.tok
		c.mu.Unlock()
		return tok, nil
	default:
		if e.cached && names(*o.rejected, e.tok) {
			c.dropLocked(e)
		}
		key.rejected, key.rejectedBy, key.rejectedGeneration = true, o.rejected.Fingerprint, o.rejected.Generation
	}
	if err := ctx.Err(); err != nil {
		c.mu.Unlock()
		return Token{}, fmt.Errorf("rotavault: token for %q: %w", credentialID, context.Cause(ctx))
	}
	f := e.flights[key]
	if f == nil {
		f = c.startLocked(ctx, credentialID, e, key)
	} else if dl, ok := ctx.Deadline(); !ok {
		f.deadline = time.Time{}
	} else if !f.deadline.IsZero() && dl.After(f.deadline) {
		f.deadline = dl
	}
	f.waiters++
	c.mu.Unlock()

	select {
	case <-f.done:
		return f.tok, f.err
	case <-ctx.Done():
		c.mu.Lock()
		f.waiters--
		if f.waiters == 0 {
			// Nobody wants the answer any more.
			f.cancel()
			if e.flights[key] == f {
				delete(e.flights, key)
			}
		}
		c.mu.Unlock()
		return Token{}, fmt.Errorf("rotavault: token for %q: %w", credentialID, context.Cause(ctx))
	}
}

// startLocked starts a flight asking the server for key. c.mu is held.
func (c *Client) startLocked(ctx context.Context, credentialID string, e *entry, key flightKey) *flight {
	// The call keeps the first caller's values (outgoing metadata, per-RPC
	// credentials) but not its cancellation: it runs while anybody waits.
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(c.ctx, cancel)
	f := &flight{done: make(chan struct{}), cancel: cancel}
	if dl, ok := ctx.Deadline(); ok {
		f.deadline = dl
	}
	e.flights[key] = f
	req := &rotavaultv1.GetAccessTokenRequest{CredentialId: credentialID}
	if key.minRemaining > 0 {
		req.MinRemainingLifetime = durationpb.New(key.minRemaining)
	}
	switch {
	case key.rejected && key.rejectedBy != "":
		req.RejectedToken = &rotavaultv1.RejectedToken{Token: &rotavaultv1.RejectedToken_Fingerprint{Fingerprint: key.rejectedBy}}
	case key.rejected:
		req.RejectedToken = &rotavaultv1.RejectedToken{Token: &rotavaultv1.RejectedToken_Generation{Generation: key.rejectedGeneration}}
	}
	// What the answer may be cached against: no drop may happen meanwhile.
	cacheable, epoch, entryEpoch := !c.opts.watch || c.cursor != "", c.epoch, e.epoch
	deadline := func() time.Time {
		c.mu.Lock()
		defer c.mu.Unlock()
		return f.deadline
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer stop()
		defer cancel()
		resp, err := c.getAccessToken(fctx, req, deadline)
		if err == nil && !key.rejected {
			// Asked for less than the margin (nothing cached to size it
			// by), the server may answer with a token about to expire: ask
			// once more for one outside its margin, or keep this one.
			// (Past its use_until is the server's own judgement: asking
			// again for more lifetime would not change it.)
			tok := tokenFromProto(resp)
			if m := c.margin(tok); m > key.minRemaining && !c.lastsFor(tok, key.minRemaining) {
				req.MinRemainingLifetime = durationpb.New(m)
				if again, err := c.getAccessToken(fctx, req, deadline); err == nil {
					resp = again
				}
			}
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if e.flights[key] == f {
			delete(e.flights, key)
		}
		switch {
		case c.ctx.Err() != nil:
			f.err = ErrClosed
		case err != nil:
			f.err = wrapError(credentialID, err)
			var reauth *ReauthenticationRequiredError
			if errors.As(f.err, &reauth) && e.cached {
				c.dropLocked(e)
			}
		default:
			f.tok = tokenFromProto(resp)
			if cacheable && epoch == c.epoch && entryEpoch == e.epoch && !c.closed {
				c.storeLocked(e, f.tok)
			}
		}
		close(f.done)
	}()
	return f
}

// names reports whether the rejected token is tok: by fingerprint, or by
// generation when the report has no fingerprint.
func names(rejected, tok Token) bool {
	if rejected.Fingerprint != "" {
		return rejected.Fingerprint == tok.Fingerprint
	}
	return rejected.Generation == tok.Generation
}

// storeLocked caches tok unless a newer token of the same family is there.
func (c *Client) storeLocked(e *entry, tok Token) {
	if e.cached && e.tok.FamilyID == tok.FamilyID && e.tok.Generation > tok.Generation {
		return
	}
	e.tok, e.cached = tok, true
}

// dropLocked forgets e's token and fences off calls in flight.
func (c *Client) dropLocked(e *entry) {
	e.tok, e.cached = Token{}, false
	e.epoch++
}

// dropAllLocked forgets every cached token.
func (c *Client) dropAllLocked() {
	for _, e := range c.entries {
		e.tok, e.cached = Token{}, false
	}
	c.epoch++
}

// margin is how long before its expiry tok stops being handed out: the
// refresh margin, or a quarter of its lifetime when that is less.
func (c *Client) margin(tok Token) time.Duration {
	m := c.opts.margin
	if life := tok.Expiry.Sub(tok.IssuedAt); !tok.IssuedAt.IsZero() && life > 0 {
		m = min(m, life/4)
	}
	return m
}

// usable reports whether tok may be handed to a caller wanting
// minRemaining: it lasts that long, and its use_until has not come. A
// token is cached until min(expiry − margin, use_until): before use_until
// another replica may rotate it at a provider that kills the previous
// access token, and a cache that kept it longer would hand out a dead
// token.
func (c *Client) usable(tok Token, minRemaining time.Duration) bool {
	return c.lastsFor(tok, minRemaining) && c.opts.now().Before(tok.UsableUntil())
}

// lastsFor reports whether tok has more than minRemaining (and the
// refresh margin) left before it expires.
func (c *Client) lastsFor(tok Token, minRemaining time.Duration) bool {
	return c.opts.now().Add(max(c.margin(tok), minRemaining)).Before(tok.Expiry)
}
