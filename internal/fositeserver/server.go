// Package fositeserver runs a real OAuth 2.0 authorization server, composed
// from github.com/ory/fosite, on a loopback port for integration tests.
//
// It stands in for a generic provider that rotates the refresh token on every
// refresh and, when a rotated-out refresh token is presented again, revokes
// the whole token family (fosite's refresh-token reuse detection). fosite
// v0.49.0 has no rotation grace period: its memory store's
// RotateRefreshToken revokes the old token at once (Hydra adds the grace
// period in its own persister), so a retry after a lost response is always a
// reuse here. The token
// endpoint is instrumented: requests are counted (Stats) and responses can be
// dropped after fosite has processed the request (LoseNextResponses), which
// is how a client loses a rotated refresh token in real life.
package fositeserver

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/ory/fosite"
	"github.com/ory/fosite/compose"
	"github.com/ory/fosite/storage"
)

const (
	tokenPath         = "/oauth2/token"
	authorizePath     = "/oauth2/auth"
	revocationPath    = "/oauth2/revoke"
	introspectionPath = "/oauth2/introspect"

	// subject is the resource owner who consents on every authorization.
	subject = "alice"

	// globalSecretBytes is above fosite's 32-byte minimum for HMAC token signing.
	globalSecretBytes = 32

	// bcryptCost is bcrypt's minimum. Client secrets here are test fixtures;
	// fosite's default cost of 12 would spend a quarter second of CPU on every
	// token request of a test suite that runs on two cores.
	bcryptCost = 4

	readHeaderTimeout = 10 * time.Second
	shutdownTimeout   = 5 * time.Second
)

// Config configures a Server. The zero value is usable.
type Config struct {
	// AccessTokenLifespan is how long issued access tokens live. Zero means one hour.
	AccessTokenLifespan time.Duration
	// RefreshTokenLifespan is how long each issued refresh token lives. Zero
	// means fosite's default of 30 days; a negative value means refresh tokens
	// never expire.
	RefreshTokenLifespan time.Duration
	// Logger receives one line per token-endpoint request. Nil discards logs.
	Logger *slog.Logger
	// InvalidGrantStatus, when set, is the HTTP status the public token
	// endpoint answers invalid_grant with, instead of fosite's 400: Auth0
	// answers a reused refresh token with 403 invalid_grant. fosite's
	// processing (reuse detection and family revocation) is unchanged; only
	// the status line differs. It must be a 4xx status.
	InvalidGrantStatus int
	// TokenEndpointAuthMethod is how clients added later must authenticate
	// at the token endpoint: "client_secret_post" (the default) or
	// "client_secret_basic"; fosite refuses the other with invalid_client.
	TokenEndpointAuthMethod string
}

// Server is a running fosite authorization server on 127.0.0.1.
//
// A Server is safe for concurrent use. Its endpoints are served until Close.
type Server struct {
	log       *slog.Logger
	fositeCfg *fosite.Config
	provider  fosite.OAuth2Provider
	store     *storage.MemoryStore

	// fositeMu serialises every call into fosite and its memory store. The
	// memory store is not safe for concurrent rotation: RevokeRefreshToken
	// writes the refresh-token map under a different mutex than its readers
	// hold, and without transactions two refreshes of the same token could
	// both succeed. Serialising gives the behaviour of a provider without a
	// grace period: the first refresh wins, the second is reuse.
	fositeMu sync.Mutex

	invalidGrantStatus int
	authMethod         string

	statsMu        sync.Mutex
	stats          Stats
	introspections int
	loseNext       int
	statsChanged   chan struct{} // closed and replaced whenever stats change

	url         string
	internalURL string
	public      *http.Server
	internal    *http.Server
	httpClient  *http.Client
	serveWG     sync.WaitGroup

	closed    chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// Start composes a fosite provider with the authorization-code, PKCE,
// refresh-token, revocation and introspection handlers over an in-memory
// store, and serves it on a free port of 127.0.0.1. It registers no client:
// call AddClient.
//
// PKCE with S256 is required on every authorization request. Start returns an
// error if it cannot draw a secret or listen.
func Start(cfg Config) (*Server, error) {
	if st := cfg.InvalidGrantStatus; st != 0 && (st < 400 || st > 499) {
		return nil, fmt.Errorf("fositeserver: InvalidGrantStatus %d is not a 4xx status", st)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	secret := make([]byte, globalSecretBytes)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("fositeserver: drawing global secret: %w", err)
	}

	refreshLifespan := cfg.RefreshTokenLifespan
	if refreshLifespan < 0 {
		refreshLifespan = -1 // fosite's "no expiry"
	}

	fcfg := &fosite.Config{
		AccessTokenLifespan:            cfg.AccessTokenLifespan,
		RefreshTokenLifespan:           refreshLifespan,
		GlobalSecret:                   secret,
		HashCost:                       bcryptCost,
		EnforcePKCE:                    true,
		EnablePKCEPlainChallengeMethod: false,
		ScopeStrategy:                  fosite.ExactScopeStrategy,
		AudienceMatchingStrategy:       fosite.DefaultAudienceMatchingStrategy,
	}
	// fosite fills a nil hasher lazily from its getter; setting it here keeps
	// the Config read-only once requests arrive.
	fcfg.ClientSecretsHasher = &fosite.BCrypt{Config: fcfg}

	store := storage.NewMemoryStore()
	provider := compose.Compose(fcfg, store, compose.NewOAuth2HMACStrategy(fcfg),
		compose.OAuth2AuthorizeExplicitFactory,
		compose.OAuth2PKCEFactory,
		compose.OAuth2RefreshTokenGrantFactory,
		compose.OAuth2TokenRevocationFactory,
		compose.OAuth2TokenIntrospectionFactory,
	)

	s := &Server{
		log:                logger,
		invalidGrantStatus: cfg.InvalidGrantStatus,
		authMethod:         cmp.Or(cfg.TokenEndpointAuthMethod, "client_secret_post"),
		fositeCfg:          fcfg,
		provider:           provider,
		store:              store,
		statsChanged:       make(chan struct{}),
		closed:             make(chan struct{}),
		httpClient: &http.Client{
			Transport: &http.Transport{Proxy: nil},
			// The authorize endpoint redirects to the client's redirect URI,
			// where nobody listens: the code is read from the Location header.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}

	publicLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("fositeserver: listen: %w", err)
	}
	// IssueRefreshToken talks to a second listener serving the same fosite
	// provider without the token-endpoint instrumentation, so that setting up
	// a token family neither shows in Stats nor consumes a lost response.
	internalLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, errors.Join(fmt.Errorf("fositeserver: listen: %w", err), publicLn.Close())
	}
	s.url = "http://" + publicLn.Addr().String()
	s.internalURL = "http://" + internalLn.Addr().String()

	s.public = s.newHTTPServer(s.mux(s.instrumentToken(http.HandlerFunc(s.handleToken))))
	s.internal = s.newHTTPServer(s.mux(http.HandlerFunc(s.handleToken)))
	s.serve(s.public, publicLn)
	s.serve(s.internal, internalLn)
	return s, nil
}

// URL returns the server's base URL, http://127.0.0.1:PORT.
func (s *Server) URL() string { return s.url }

// TokenURL returns the token endpoint's URL.
func (s *Server) TokenURL() string { return s.url + tokenPath }

// AuthorizeURL returns the authorization endpoint's URL.
func (s *Server) AuthorizeURL() string { return s.url + authorizePath }

// RevocationURL returns the RFC 7009 revocation endpoint's URL. Clients
// authenticate there as at the token endpoint (client_secret_post).
func (s *Server) RevocationURL() string { return s.url + revocationPath }

// IntrospectionURL returns the RFC 7662 introspection endpoint's URL. fosite
// requires the caller to authenticate there with HTTP Basic client
// credentials or a bearer access token, not with form fields.
func (s *Server) IntrospectionURL() string { return s.url + introspectionPath }

// Close stops both listeners, waits for in-flight requests (up to a few
// seconds) and for the serving goroutines, and wakes WaitForTokenRequests
// callers with ErrClosed. It is safe to call more than once; later calls
// return the first call's result.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		err := errors.Join(shutdown(ctx, s.public), shutdown(ctx, s.internal))
		s.serveWG.Wait()
		s.httpClient.CloseIdleConnections()
		if err != nil {
			s.closeErr = fmt.Errorf("fositeserver: close: %w", err)
		}
	})
	return s.closeErr
}

func shutdown(ctx context.Context, srv *http.Server) error {
	if err := srv.Shutdown(ctx); err != nil {
		return errors.Join(err, srv.Close())
	}
	return nil
}

func (s *Server) newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
}

func (s *Server) serve(srv *http.Server, ln net.Listener) {
	s.serveWG.Add(1)
	go func() {
		defer s.serveWG.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("fositeserver: serve", "addr", ln.Addr().String(), "error", err)
		}
	}()
}

func (s *Server) mux(token http.Handler) *http.ServeMux {
	// Methods are left to fosite so that a wrong one gets fosite's own error.
	mux := http.NewServeMux()
	mux.Handle(tokenPath, token)
	mux.HandleFunc(authorizePath, s.handleAuthorize)
	mux.HandleFunc(revocationPath, s.handleRevoke)
	mux.HandleFunc(introspectionPath, s.handleIntrospect)
	mux.HandleFunc(metadataPath, s.handleMetadata)
	return mux
}

func newSession(subject string) *fosite.DefaultSession {
	return &fosite.DefaultSession{Subject: subject, Username: subject}
}

// handleAuthorize is the authorization endpoint with simulated consent:
// the user "alice" is logged in and approves every requested scope. fosite
// has already rejected scopes the client may not ask for.
func (s *Server) handleAuthorize(w http.ResponseWriter, r *http.Request) {
	s.fositeMu.Lock()
	defer s.fositeMu.Unlock()

	ctx := r.Context()
	ar, err := s.provider.NewAuthorizeRequest(ctx, r)
	if err != nil {
		s.logRejected(ctx, "authorize", err)
		s.provider.WriteAuthorizeError(ctx, w, ar, err)
		return
	}
	for _, scope := range ar.GetRequestedScopes() {
		ar.GrantScope(scope)
	}
	resp, err := s.provider.NewAuthorizeResponse(ctx, ar, newSession(subject))
	if err != nil {
		s.logRejected(ctx, "authorize", err)
		s.provider.WriteAuthorizeError(ctx, w, ar, err)
		return
	}
	s.provider.WriteAuthorizeResponse(ctx, w, ar, resp)
}

// handleToken is the token endpoint exactly as fosite answers it, errors
// included (WriteAccessError).
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	s.fositeMu.Lock()
	defer s.fositeMu.Unlock()

	ctx := r.Context()
	ar, err := s.provider.NewAccessRequest(ctx, r, newSession(""))
	if err != nil {
		s.logRejected(ctx, "token", err)
		s.provider.WriteAccessError(ctx, w, ar, err)
		return
	}
	resp, err := s.provider.NewAccessResponse(ctx, ar)
	if err != nil {
		s.logRejected(ctx, "token", err)
		s.provider.WriteAccessError(ctx, w, ar, err)
		return
	}
	s.provider.WriteAccessResponse(ctx, w, ar, resp)
}

func (s *Server) handleRevoke(w http.ResponseWriter, r *http.Request) {
	s.fositeMu.Lock()
	defer s.fositeMu.Unlock()

	ctx := r.Context()
	err := s.provider.NewRevocationRequest(ctx, r)
	if err != nil {
		s.logRejected(ctx, "revoke", err)
	}
	s.provider.WriteRevocationResponse(ctx, w, err)
}

// handleIntrospect is fosite's RFC 7662 endpoint: access and refresh tokens
// alike (introspecting a refresh token neither rotates it nor counts as its
// reuse); a rotated-out or revoked one is {"active":false}.
func (s *Server) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	s.countIntrospection()
	s.fositeMu.Lock()
	defer s.fositeMu.Unlock()

	ctx := r.Context()
	ir, err := s.provider.NewIntrospectionRequest(ctx, r, newSession(""))
	if err != nil {
		s.logRejected(ctx, "introspect", err)
		s.provider.WriteIntrospectionError(ctx, w, err)
		return
	}
	s.provider.WriteIntrospectionResponse(ctx, w, ir)
}

// logRejected logs fosite's error name and hint only: its debug text can
// quote storage errors, and nothing here may risk echoing a credential.
func (s *Server) logRejected(ctx context.Context, endpoint string, err error) {
	rfc := fosite.ErrorToRFC6749Error(err)
	s.log.DebugContext(ctx, "fositeserver: request rejected",
		"endpoint", endpoint, "error", rfc.ErrorField, "hint", rfc.HintField)
}
