package broker

import (
	"context"
	"errors"
	"github.com/rotavault/rotavault/broker/internal/jsonrec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/audit"
	"github.com/rotavault/rotavault/broker/family"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/provider"
	"github.com/rotavault/rotavault/store"
)

// The broker's test harness: one fake clock, one fault-injecting store
// wrapper, one recording auditor and one scripted provider, shared by every
// test of the package. Tests that can use the real provider client against
// the simulator or fosite do; the scripted provider is for the table tests
// that must produce each answer on cue.

// faultStore wraps a store and counts its reads, writes and bytes written;
// faults injected into it act on the operations they match.
type faultStore struct {
	store.Store
	reads, writes, bytes atomic.Int64
	// conflicts counts the check-and-set conflicts of writes to keys under
	// conflictPrefix.
	conflictPrefix string
	conflicts      atomic.Int64
	mu             sync.Mutex
	faults         []*fault
}

var _ store.Store = (*faultStore)(nil)

// fault acts on the store operations it matches: op ("get", "put",
// "delete"), a key prefix, and match when set. The zero fault matches and
// does nothing.
type fault struct {
	op     string
	prefix string
	match  func(key string, value []byte) bool
	// once removes the fault after its first hit.
	once bool
	// before runs before the operation.
	before func()
	// fail fails the operation, which is not applied.
	fail error
	// lose applies the operation, then answers with this error: the answer
	// was lost (a timeout, a reset).
	lose error
	// replay applies a put, then sends it again, as Vault's client does
	// when an answer is lost: the caller gets the replay's answer.
	replay bool
	// after sees the result and may change it.
	after func(key string, value []byte, expected, version uint64, err error) (uint64, error)

	hits atomic.Int64
}

// inject adds f; the returned function removes it.
func (s *faultStore) inject(f *fault) (remove func()) {
	s.mu.Lock()
	s.faults = append(s.faults, f)
	s.mu.Unlock()
	return func() { s.remove(f) }
}

func (s *faultStore) remove(f *fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, g := range s.faults {
		if g == f {
			s.faults = append(s.faults[:i], s.faults[i+1:]...)
			return
		}
	}
}

// fault returns the first fault matching the operation, removing it if it
// acts once.
func (s *faultStore) fault(op, key string, value []byte) *fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.faults {
		if f.op != op || !strings.HasPrefix(key, f.prefix) || (f.match != nil && !f.match(key, value)) {
			continue
		}
		if f.once {
			s.faults = append(s.faults[:i], s.faults[i+1:]...)
		}
		f.hits.Add(1)
		return f
	}
	return nil
}

func (s *faultStore) Get(ctx context.Context, key string) (store.Record, error) {
	s.reads.Add(1)
	f := s.fault("get", key, nil)
	if f != nil && f.before != nil {
		f.before()
	}
	if f != nil && f.fail != nil {
		return store.Record{}, f.fail
	}
	return s.Store.Get(ctx, key)
}

func (s *faultStore) Put(ctx context.Context, key string, value []byte, expected uint64) (uint64, error) {
	s.writes.Add(1)
	s.bytes.Add(int64(len(value)))
	v, err := s.put(ctx, key, value, expected)
	if s.conflictPrefix != "" && strings.HasPrefix(key, s.conflictPrefix) && errors.Is(err, store.ErrConflict) {
		s.conflicts.Add(1)
	}
	return v, err
}

func (s *faultStore) put(ctx context.Context, key string, value []byte, expected uint64) (uint64, error) {
	f := s.fault("put", key, value)
	if f == nil {
		return s.Store.Put(ctx, key, value, expected)
	}
	if f.before != nil {
		f.before()
	}
	if f.fail != nil {
		return 0, f.fail
	}
	v, err := s.Store.Put(ctx, key, value, expected)
	if err == nil && f.replay {
		v, err = s.Store.Put(ctx, key, value, expected)
	}
	if err == nil && f.lose != nil {
		v, err = 0, f.lose
	}
	if f.after != nil {
		v, err = f.after(key, value, expected, v, err)
	}
	return v, err
}

func (s *faultStore) Delete(ctx context.Context, key string) error {
	f := s.fault("delete", key, nil)
	if f != nil && f.fail != nil {
		return f.fail
	}
	return s.Store.Delete(ctx, key)
}

// errStoreDown is what an injected outage answers.
var errStoreDown = errors.New("faultstore: store unavailable (test)")

// familyWrites matches family records; with claims false it skips claim
// writes.
func familyWrites(claims bool) func(string, []byte) bool {
	return func(_ string, value []byte) bool {
		var f family.Record
		if err := decodeRecord(value, &f, &f.Format); err != nil {
			return false
		}
		return claims || f.Claim == nil
	}
}

// recordingAuditor keeps every audit event.
type recordingAuditor struct {
	mu     sync.Mutex
	events []audit.Event
}

var _ Auditor = (*recordingAuditor)(nil)

func (a *recordingAuditor) Record(_ context.Context, e audit.Event) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.events = append(a.events, e)
	return nil
}

func (a *recordingAuditor) last(action string) (audit.Event, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := len(a.events) - 1; i >= 0; i-- {
		if a.events[i].Action == action {
			return a.events[i], true
		}
	}
	return audit.Event{}, false
}

func (a *recordingAuditor) count(action string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, e := range a.events {
		if e.Action == action {
			n++
		}
	}
	return n
}

// actions returns the actions recorded since the first n events.
func (a *recordingAuditor) actionsSince(n int) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, e := range a.events[n:] {
		out = append(out, e.Action)
	}
	return out
}

func (a *recordingAuditor) len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.events)
}

// scriptedProvider answers refreshes from a script, in order; once the
// script runs out, each refresh rotates ("rt-<n>", "at-<n>"). Revocations
// answer revokeErr; introspections introspect.
type scriptedProvider struct {
	mu        sync.Mutex
	script    []error
	revokeErr error
	active    bool
	refreshes int
	presented []string
	revoked   []string
}

var _ Provider = (*scriptedProvider)(nil)

// then appends answers to the script: nil is a rotation, an error is
// answered as is.
func (p *scriptedProvider) then(answers ...error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.script = append(p.script, answers...)
}

func (p *scriptedProvider) Refresh(_ context.Context, _ provider.Endpoint, _ provider.ClientCredentials, rt string) (*provider.Token, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refreshes++
	p.presented = append(p.presented, rt)
	if len(p.script) > 0 {
		err := p.script[0]
		p.script = p.script[1:]
		if err != nil {
			return nil, err
		}
	}
	n := string(rune('a' + p.refreshes%26))
	return &provider.Token{AccessToken: "at-" + n, RefreshToken: "rt-" + n, TokenType: "Bearer", ExpiresIn: time.Hour}, nil
}

func (p *scriptedProvider) Revoke(_ context.Context, _ provider.Endpoint, _ provider.ClientCredentials, token string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.revoked = append(p.revoked, token)
	return p.revokeErr
}

func (p *scriptedProvider) IntrospectToken(context.Context, provider.Endpoint, provider.ClientCredentials, string, provider.TokenTypeHint) (provider.Introspection, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return provider.Introspection{Active: p.active}, nil
}

var errNotScripted = errors.New("scriptedprovider: not scripted")

func (p *scriptedProvider) ExchangeCode(context.Context, provider.Endpoint, provider.ClientCredentials, string, string, string) (*provider.Token, error) {
	return nil, errNotScripted
}

func (p *scriptedProvider) AuthCodeURL(provider.Endpoint, provider.ClientCredentials, string, string, string, []string) (string, error) {
	return "", errNotScripted
}

func (p *scriptedProvider) StartDeviceAuthorization(context.Context, provider.Endpoint, provider.ClientCredentials, []string) (*provider.DeviceAuthorization, error) {
	return nil, errNotScripted
}

func (p *scriptedProvider) PollDeviceToken(context.Context, provider.Endpoint, provider.ClientCredentials, string) (*provider.Token, error) {
	return nil, errNotScripted
}

// Provider answers, as the provider client classifies them.
var (
	answerInvalidGrant = &provider.Error{Op: "refresh", Outcome: provider.OutcomeRejected, StatusCode: 400, Code: "invalid_grant", Description: "expired access/refresh token"}
	answerBadClient    = &provider.Error{Op: "refresh", Outcome: provider.OutcomeRejected, StatusCode: 400, Code: "invalid_client", Description: "invalid client credentials"}
	answerUnknown      = &provider.Error{Op: "refresh", Outcome: provider.OutcomeUnknown, Description: "read: connection reset by peer"}
	answerNotProcessed = &provider.Error{Op: "refresh", Outcome: provider.OutcomeNotProcessed, StatusCode: 503, RetryAfter: 2 * time.Millisecond, Description: "dial tcp: connection refused"}
)

// newBroker starts a broker, closed when the test ends.
func newBroker(t *testing.T, cfg Config, opts ...option.Option) *Broker {
	t.Helper()
	b, err := New(context.Background(), cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// newTestBroker returns a broker on st with the real provider client and a
// recording auditor, closed when the test ends.
func newTestBroker(t *testing.T, st store.Store, opts ...option.Option) *Broker {
	t.Helper()
	return newBroker(t, Config{Store: st, Provider: provider.New(nil), Auditor: &recordingAuditor{}}, opts...)
}

// encodeRecord encodes a record as the broker stores it.
func encodeRecord(v any) ([]byte, error) { return jsonrec.Encode(v) }
