package providersim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

const (
	// defaultSessionTimeout is Salesforce's default session timeout, which is
	// what bounds an access token's life.
	defaultSessionTimeout = 2 * time.Hour
	// maxBodyBytes bounds every request body.
	maxBodyBytes = 64 << 10
	// shutdownGrace bounds how long Close waits for in-flight requests before
	// cutting their connections.
	shutdownGrace = 5 * time.Second
)

// Config configures a Server. The zero value is a Salesforce org with Refresh
// Token Rotation on and a two-hour session timeout.
type Config struct {
	// DisableRotation is the legacy mode: refresh responses carry no
	// refresh_token and the same refresh token stays valid.
	DisableRotation bool
	// ReuseGrace of 0 is Salesforce: any reuse of a superseded refresh token
	// revokes the family. A positive window accepts the immediately previous
	// refresh token once within ReuseGrace after its rotation (Okta/Hydra
	// style): it returns a new pair and invalidates the refresh token issued
	// in between, whose later use then counts as reuse.
	ReuseGrace time.Duration
	// SessionTimeout is the access token lifetime (default 2h). Responses
	// carry no expires_in, as Salesforce's don't; introspection reports exp.
	SessionTimeout time.Duration
	// Now is the clock (default time.Now). It drives token expiry, the reuse
	// grace window and issued_at; latency injection uses real timers.
	Now func() time.Time
	// Logger receives events without token values (default: discard).
	Logger *slog.Logger
	// DeviceCodeLifetime is how long a device flow waits for the user
	// (default 10m).
	DeviceCodeLifetime time.Duration
	// DeviceInterval is the polling interval device flows announce (default
	// 5s, sent in whole seconds). A poll sooner than it after the previous
	// one, by real time, answers slow_down.
	DeviceInterval time.Duration
}

// Client is a connected app.
type Client struct {
	ID string
	// Secret is the consumer secret; empty for a public client. It is also
	// the key of the response signature.
	Secret string
	// RedirectURIs are the callback URLs; authorize requires an exact match.
	RedirectURIs []string
	// RequirePKCE rejects authorization requests without a code_challenge.
	RequirePKCE bool
}

// Stats counts what the Server has seen since Start.
type Stats struct {
	// TokenRequests counts requests that arrived at the token endpoint,
	// including those answered by an injected failure.
	TokenRequests int
	// RefreshRequests counts refresh_token grants that were processed,
	// whatever their outcome.
	RefreshRequests int
	// Rotations counts refreshes that issued a new refresh token (grace
	// reuses included).
	Rotations int
	// CodeExchanges counts successful authorization_code grants.
	CodeExchanges int
	// ReuseDetections counts presentations of a superseded refresh token
	// outside the grace window, each of which revoked its family.
	ReuseDetections int
	// FamiliesRevoked counts families revoked for any reason: reuse, the
	// revoke endpoint, RevokeFamilyOf.
	FamiliesRevoked int
	// GraceReuses counts superseded tokens accepted within ReuseGrace.
	GraceReuses int
	// LostResponses counts token requests processed whose answer was never
	// delivered (FailLoseResponse, FailHang).
	LostResponses int
	// InjectedFailures counts token requests answered by InjectFailure.
	InjectedFailures int
	// Revocations counts successful calls of the revoke endpoint.
	Revocations int
	// Introspections counts calls of the introspection endpoint.
	Introspections int
	// DeviceAuthorizations counts device flows started (both dialects).
	DeviceAuthorizations int
	// DevicePolls counts device-code polls of the token endpoint that were
	// processed, whatever their answer.
	DevicePolls int
	// DeviceTokenExchanges counts approved device codes redeemed for tokens.
	DeviceTokenExchanges int
	// DeviceSlowDowns counts polls answered slow_down.
	DeviceSlowDowns int
}

// Server is a running simulator, created by Start; its zero value is not
// usable. Its methods are safe for concurrent use.
type Server struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	url     string
	handler http.Handler
	srv     *http.Server
	ln      net.Listener

	// done is closed by Close: it releases hanging and delayed requests and
	// waiters.
	done      chan struct{}
	served    chan struct{}
	closeOnce sync.Once
	closeErr  error

	mu       sync.Mutex
	clients  map[string]Client
	famSeq   int
	refresh  map[tokenKey]*refreshToken
	access   map[tokenKey]*accessToken
	codes    map[tokenKey]*authCode
	stats    Stats
	arrived  chan struct{} // closed and replaced when a token request arrives
	failures []injectedFailure
	latency  time.Duration
	corrupt  bool
	echo     Echo
	// devices are the started device flows by device-code digest; see
	// device.go.
	devices         map[tokenKey]*deviceFlow
	deviceSlowDowns int
	// secrets is every secret value issued or shown, for leak checks.
	secrets []string
	// metadataOverride changes the discovery document (metadata.go).
	metadataOverride map[string]any
}

// Start validates cfg, listens on 127.0.0.1 on a free port and serves until
// Close. It fails on a negative duration in cfg or when it cannot listen.
func Start(cfg Config) (*Server, error) {
	if cfg.ReuseGrace < 0 {
		return nil, fmt.Errorf("providersim: negative ReuseGrace %v", cfg.ReuseGrace)
	}
	if cfg.SessionTimeout < 0 {
		return nil, fmt.Errorf("providersim: negative SessionTimeout %v", cfg.SessionTimeout)
	}
	if cfg.DeviceCodeLifetime < 0 || cfg.DeviceInterval < 0 {
		return nil, fmt.Errorf("providersim: negative DeviceCodeLifetime %v or DeviceInterval %v", cfg.DeviceCodeLifetime, cfg.DeviceInterval)
	}
	if cfg.SessionTimeout == 0 {
		cfg.SessionTimeout = defaultSessionTimeout
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger,
		now:     cfg.Now,
		done:    make(chan struct{}),
		served:  make(chan struct{}),
		clients: make(map[string]Client),
		refresh: make(map[tokenKey]*refreshToken),
		access:  make(map[tokenKey]*accessToken),
		codes:   make(map[tokenKey]*authCode),
		arrived: make(chan struct{}),
	}
	if s.log == nil {
		// Not a handler writing to io.Discard: that one would still
		// format every request's record first.
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.handler = s.routes()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("providersim: listen: %w", err)
	}
	s.ln = ln
	s.url = "http://" + ln.Addr().String()
	s.srv = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	go func() {
		defer close(s.served)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("providersim: serve", "err", err)
		}
	}()
	s.log.Info("providersim: started", "url", s.url)
	return s, nil
}

// URL returns the base URL, e.g. http://127.0.0.1:PORT. It is the My Domain
// and the instance_url of every token response.
func (s *Server) URL() string { return s.url }

// Handler returns the simulator's routes for embedding in another server.
// Responses still name URL() as instance_url.
func (s *Server) Handler() http.Handler { return s.handler }

// Close stops the listener, releases requests held by FailHang or latency
// (their connections are closed without an answer), waits up to 5s for
// in-flight requests and then for the serving goroutine. It is idempotent and
// returns the first call's error.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		if err := s.srv.Shutdown(ctx); err != nil {
			// Some handler outlived the grace period: cut it off.
			s.closeErr = errors.Join(fmt.Errorf("providersim: shutdown: %w", err), s.srv.Close())
		}
		<-s.served
		s.log.Info("providersim: closed")
	})
	return s.closeErr
}

// AddClient registers a connected app, replacing any app with the same ID.
// Tokens already issued to a replaced app stay valid.
func (s *Server) AddClient(c Client) {
	c.RedirectURIs = slices.Clone(c.RedirectURIs)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clients[c.ID] = c
	if c.Secret != "" {
		s.secrets = append(s.secrets, c.Secret)
	}
}

// Secrets returns every secret value the simulator issued or was shown:
// refresh and access tokens, authorization codes, the PKCE verifiers
// presented with them, client secrets. Leak tests search logs and files for
// them. It works after Close.
func (s *Server) Secrets() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.secrets)
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// SetLatency delays every later token-endpoint request by d before it is
// processed (and before any injected failure answers). A request whose
// client gives up during the delay is dropped unprocessed. d <= 0 removes
// the delay.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = max(d, 0)
}

// CorruptSignatures makes later token responses carry a signature that does
// not verify with the client secret, as a forged response would.
func (s *Server) CorruptSignatures(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.corrupt = on
}

// WaitForTokenRequests blocks until at least n token-endpoint requests have
// arrived since Start (arrived, not necessarily answered). It returns nil,
// ctx's error wrapped, or ErrClosed.
func (s *Server) WaitForTokenRequests(ctx context.Context, n int) error {
	for {
		s.mu.Lock()
		got, arrived := s.stats.TokenRequests, s.arrived
		s.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-arrived:
		case <-ctx.Done():
			return fmt.Errorf("providersim: waiting for %d token requests, %d arrived: %w", n, got, ctx.Err())
		case <-s.done:
			return ErrClosed
		}
	}
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /services/oauth2/authorize", s.handleAuthorize)
	mux.HandleFunc("POST /services/oauth2/authorize", s.handleAuthorize)
	mux.HandleFunc("POST /services/oauth2/token", s.handleToken)
	mux.HandleFunc("POST /services/oauth2/revoke", s.handleRevoke)
	mux.HandleFunc("POST /services/oauth2/introspect", s.handleIntrospect)
	mux.HandleFunc("GET /services/data/", s.handleData)
	mux.HandleFunc("GET "+MetadataPath, s.handleMetadata)
	mux.HandleFunc("POST "+DeviceAuthorizationPath, s.handleDeviceAuthorization)
	mux.HandleFunc("GET "+VerificationPath, s.handleVerification)
	mux.HandleFunc("POST "+VerificationPath, s.handleVerification)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
		mux.ServeHTTP(w, r)
	})
}
