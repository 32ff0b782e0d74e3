package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/rotavault/rotavault/boltstore"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

const (
	defaultServer = "127.0.0.1:7443"
	// maxSecretFileSize bounds what a secret file may hold: the longest
	// secret the API accepts is a 4 KiB refresh token.
	maxSecretFileSize = 64 << 10
)

// usageError is a mistake in how a command was called (exit code 2), as
// opposed to a failure while doing what was asked (exit code 1).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// readSecret reads a secret from a file, or from stdin when path is "-",
// without surrounding whitespace. On a terminal it prompts on stderr and
// reads one line without echoing it, as passwords are read. Errors never
// quote the content.
func (a *app) readSecret(path, what string) (string, error) {
	var r io.Reader
	if fd, ok := terminalFD(a.stdin); ok && path == "-" {
		fmt.Fprintf(a.stderr, "%s (input hidden, Enter ends it): ", upperFirst(what))
		raw, err := term.ReadPassword(fd)
		fmt.Fprintln(a.stderr)
		if err != nil {
			return "", fmt.Errorf("read %s from the terminal: %w", what, err)
		}
		r = bytes.NewReader(raw)
	} else if path == "-" {
		r = a.stdin
	} else {
		f, err := os.Open(path)
		if err != nil {
			return "", fmt.Errorf("read %s: %w", what, err)
		}
		defer f.Close()
		r = f
	}
	raw, err := io.ReadAll(io.LimitReader(r, maxSecretFileSize+1))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", what, err)
	}
	if len(raw) > maxSecretFileSize {
		return "", usageErrorf("the %s in %s is longer than %d bytes", what, describePath(path), maxSecretFileSize)
	}
	s := strings.TrimSpace(string(raw))
	if s == "" {
		return "", usageErrorf("no %s in %s", what, describePath(path))
	}
	return s, nil
}

// terminalFD returns the file descriptor of stdin, stdout or stderr if it
// is a terminal.
func terminalFD(stream any) (int, bool) {
	f, ok := stream.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return 0, false
	}
	return int(f.Fd()), true
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func describePath(path string) string {
	if path == "-" {
		return "stdin"
	}
	return path
}

// splitScopes accepts repeated flags and space-separated lists alike:
// --scope api --scope refresh_token, or --scope "api refresh_token".
func splitScopes(values []string) []string {
	var out []string
	for _, v := range values {
		out = append(out, strings.Fields(v)...)
	}
	return out
}

// clientOptions are the flags of every command that talks to a server.
type clientOptions struct {
	server  string
	timeout time.Duration
	json    bool
	// tlsCA, tlsCert and tlsKey switch the connection to TLS (mTLS with a
	// client certificate); tokenFile holds a bearer token to present.
	tlsCA, tlsCert, tlsKey string
	tokenFile              string
}

func (o *clientOptions) register(cmd *cobra.Command) {
	fs := cmd.PersistentFlags()
	fs.StringVar(&o.server, "server", defaultServer, "address of the Rotavault server: host:port, or https://host[:port] for TLS (system roots unless --tls-ca)")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "how long to wait for the server's answer (store backup --online: 10m unless set)")
	fs.BoolVar(&o.json, "json", false, "print protobuf JSON, one object per line, for scripts")
	fs.StringVar(&o.tlsCA, "tls-ca", "", "CA bundle (PEM) verifying the server's certificate; connects over TLS (system roots if only --tls-cert is given)")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "client certificate (PEM) for mTLS; connects over TLS")
	fs.StringVar(&o.tlsKey, "tls-key", "", "client private key (PEM), with --tls-cert")
	fs.StringVar(&o.tokenFile, "token-file", "", "file holding a bearer token to present (sent only over TLS, or to a loopback server)")
	for flag, name := range clientEnv {
		bindEnv(fs, flag, name)
	}
}

// clientEnv names the variables of the connection settings, shaped like
// Vault's VAULT_ADDR family. --json has none: a script's output format is
// the script's choice, not its environment's.
var clientEnv = map[string]string{
	"server":     envPrefix + "ADDR",
	"timeout":    envPrefix + "CLIENT_TIMEOUT",
	"tls-ca":     envPrefix + "CACERT",
	"tls-cert":   envPrefix + "CLIENT_CERT",
	"tls-key":    envPrefix + "CLIENT_KEY",
	"token-file": envPrefix + "TOKEN_FILE",
}

// dial connects to the server: over TLS when --server is an https URL or
// --tls-ca or --tls-cert is given, else in plaintext (a loopback server,
// e.g. rotavault dev).
func (o *clientOptions) dial() (*grpc.ClientConn, error) {
	if o.timeout <= 0 {
		return nil, usageErrorf("--timeout must be positive")
	}
	target, opts, err := o.dialOptions()
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, usageErrorf("--server %q: %v", o.server, err)
	}
	return conn, nil
}

// parseServer reads --server: host:port (TLS only with --tls-ca or
// --tls-cert), or https://host[:port] (TLS; port 443 by default). It
// returns the gRPC target and whether the URL asked for TLS.
func parseServer(server string) (target string, https bool, err error) {
	expect := func(why string) error {
		return usageErrorf("--server %q: %s; want host:port (e.g. 127.0.0.1:7443) or https://host:port", server, why)
	}
	if strings.Contains(server, "://") {
		u, perr := url.Parse(server)
		switch {
		case perr != nil:
			return "", false, expect("not a URL")
		case u.Scheme != "https":
			return "", false, expect("the only URL scheme is https")
		case u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
			return "", false, expect("a URL of a host only, without path or query")
		}
		if u.Port() == "" {
			return net.JoinHostPort(u.Hostname(), "443"), true, nil
		}
		return u.Host, true, nil
	}
	host, port, serr := net.SplitHostPort(server)
	if serr != nil || host == "" || port == "" {
		return "", false, expect("no port")
	}
	if _, perr := strconv.ParseUint(port, 10, 16); perr != nil {
		return "", false, expect("the port is not a number")
	}
	return server, false, nil
}

// dialOptions returns the gRPC target of --server and how to reach it.
func (o *clientOptions) dialOptions() (string, []grpc.DialOption, error) {
	target, https, err := parseServer(o.server)
	if err != nil {
		return "", nil, err
	}
	useTLS := https || o.tlsCA != "" || o.tlsCert != ""
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return "", nil, usageErrorf("--tls-cert and --tls-key go together")
	}
	var opts []grpc.DialOption
	if useTLS {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if o.tlsCA != "" {
			pem, err := os.ReadFile(o.tlsCA)
			if err != nil {
				return "", nil, fmt.Errorf("read --tls-ca: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return "", nil, usageErrorf("--tls-ca %s: no PEM certificate in it", o.tlsCA)
			}
			tc.RootCAs = pool
		}
		if o.tlsCert != "" {
			cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
			if err != nil {
				return "", nil, fmt.Errorf("load client certificate: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	} else {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if o.tokenFile != "" {
		if !useTLS && !isLoopbackTarget(target) {
			return "", nil, usageErrorf("--token-file: refusing to send a bearer token in plaintext to %s; give --tls-ca", o.server)
		}
		token, err := readTokenFile(o.tokenFile)
		if err != nil {
			return "", nil, err
		}
		opts = append(opts, grpc.WithPerRPCCredentials(bearerCredentials{token: token, requireTLS: useTLS}))
	}
	return target, opts, nil
}

// readTokenFile reads a bearer token; errors never quote the content.
func readTokenFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read --token-file: %w", err)
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, maxSecretFileSize+1))
	if err != nil {
		return "", fmt.Errorf("read --token-file: %w", err)
	}
	token := strings.TrimSpace(string(raw))
	if token == "" || len(raw) > maxSecretFileSize {
		return "", usageErrorf("--token-file %s: want one token of at most %d bytes", path, maxSecretFileSize)
	}
	return token, nil
}

func isLoopbackTarget(target string) bool {
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// bearerCredentials presents the token on every call. Its String hides the
// token should the value ever be printed.
type bearerCredentials struct {
	token      string
	requireTLS bool
}

func (b bearerCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

func (b bearerCredentials) RequireTransportSecurity() bool { return b.requireTLS }

func (b bearerCredentials) String() string { return "bearer(redacted)" }

// call dials the server and runs f under the command's timeout.
func (o *clientOptions) call(ctx context.Context, f func(ctx context.Context, conn *grpc.ClientConn) error) error {
	conn, err := o.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	return f(ctx, conn)
}

// specFlags are the flags describing a credential, shared by
// `credentials put` and `credentials update`.
type specFlags struct {
	provider         string
	baseURL          string
	tokenURL         string
	authorizeURL     string
	revocationURL    string
	introspectionURL string
	deviceAuthURL    string
	clientID         string
	clientSecretFile string
	scopes           []string
	accessLifetime   time.Duration
	refreshIdle      time.Duration
	refreshMax       time.Duration
	reuseGrace       time.Duration
	previousAccess   string
	clientAuth       string
	issuer           string
}

// specFields maps flags to the CredentialSpec paths an update mask names.
var specFields = []struct{ flag, path string }{
	{"base-url", "base_url"},
	{"token-url", "token_url"},
	{"authorize-url", "authorize_url"},
	{"revocation-url", "revocation_url"},
	{"introspection-url", "introspection_url"},
	{"device-authorization-url", "device_authorization_url"},
	{"client-auth-method", "client_auth_method"},
	{"issuer", "issuer"},
	{"client-id", "client_id"},
	{"client-secret-file", "client_secret"},
	{"scope", "scopes"},
	{"access-token-lifetime", "access_token_lifetime"},
	{"refresh-idle-timeout", "refresh_token_idle_timeout"},
	{"refresh-max-lifetime", "refresh_token_max_lifetime"},
	{"reuse-grace", "reuse_grace_period"},
	{"previous-access-token", "previous_access_token"},
}

func (s *specFlags) register(fs *pflag.FlagSet, create bool) {
	if create {
		fs.StringVar(&s.provider, "provider", "", "the provider's dialect: salesforce or oauth2 (required)")
	}
	fs.StringVar(&s.baseURL, "base-url", "", "Salesforce: My Domain URL, or https://login.salesforce.com (https://test.salesforce.com for sandboxes)")
	fs.StringVar(&s.tokenURL, "token-url", "", "token endpoint (required for oauth2 without --issuer; overrides the Salesforce default and the discovered one)")
	fs.StringVar(&s.authorizeURL, "authorize-url", "", "authorization endpoint, for 'rotavault reauth start'")
	fs.StringVar(&s.revocationURL, "revocation-url", "", "revocation endpoint, used when a family is replaced or deleted")
	fs.StringVar(&s.introspectionURL, "introspection-url", "", "introspection endpoint, consulted before refreshing on a rejected-token report and by periodic early detection (see credentials show)")
	fs.StringVar(&s.deviceAuthURL, "device-authorization-url", "", "oauth2 only: the RFC 8628 device authorization endpoint, for 'rotavault reauth device' (Salesforce needs none)")
	fs.StringVar(&s.clientAuth, "client-auth-method", "", "oauth2 only: how the client authenticates, client_secret_post (form fields) or client_secret_basic (HTTP Basic); default: the provider's metadata (with --issuer: Basic when listed), else form fields, Basic for introspection")
	fs.StringVar(&s.issuer, "issuer", "", "oauth2 only: the provider's issuer URL; its metadata (RFC 8414 or OpenID discovery, refetched hourly) fills the token, authorize, revocation, introspection and device endpoints not given by flags, and the client auth method")
	fs.StringVar(&s.clientID, "client-id", "", "the app's client id (Salesforce: consumer key)")
	fs.StringVar(&s.clientSecretFile, "client-secret-file", "", "file holding the client secret, - for stdin (never a flag value: command lines get logged)")
	fs.StringArrayVar(&s.scopes, "scope", nil, "scope to request; repeat the flag or separate scopes by spaces (Salesforce needs refresh_token)")
	fs.DurationVar(&s.accessLifetime, "access-token-lifetime", 0, "access-token lifetime when the provider does not say (Salesforce: the session timeout; default 2h)")
	fs.DurationVar(&s.refreshIdle, "refresh-idle-timeout", 0, "the provider's refresh-token idle timeout, if any: unused families are refreshed well before it")
	fs.DurationVar(&s.refreshMax, "refresh-max-lifetime", 0, "the provider's absolute refresh-token lifetime, if any")
	fs.DurationVar(&s.reuseGrace, "reuse-grace", 0, "how long the provider accepts the previous refresh token after a rotation (0 for Salesforce); at least the server's claim margin + 5s (20s by default): a refresh claim must fit inside it")
	fs.StringVar(&s.previousAccess, "previous-access-token", "", "whether a rotation at the provider kills the previous access token: revoked (ory/fosite, Hydra) or kept (JWT issuers, Salesforce); default: kept for salesforce, revoked for oauth2. Revoked makes every replica stop handing out a token shortly before its scheduled rotation")
}

// spec builds the CredentialSpec, reading the client secret if a file was
// named.
func (s *specFlags) spec(a *app, provider rotavaultv1.ProviderKind) (*rotavaultv1.CredentialSpec, error) {
	spec := &rotavaultv1.CredentialSpec{
		ProviderKind:     provider,
		BaseUrl:          s.baseURL,
		TokenUrl:         s.tokenURL,
		AuthorizeUrl:     s.authorizeURL,
		RevocationUrl:    s.revocationURL,
		IntrospectionUrl: s.introspectionURL,
		ClientId:         s.clientID,
		Scopes:           splitScopes(s.scopes),

		DeviceAuthorizationUrl: s.deviceAuthURL,
		Issuer:                 s.issuer,
	}
	switch s.clientAuth {
	case "":
	case "client_secret_post", "post":
		spec.ClientAuthMethod = rotavaultv1.ClientAuthMethod_CLIENT_AUTH_METHOD_CLIENT_SECRET_POST
	case "client_secret_basic", "basic":
		spec.ClientAuthMethod = rotavaultv1.ClientAuthMethod_CLIENT_AUTH_METHOD_CLIENT_SECRET_BASIC
	default:
		return nil, usageErrorf("--client-auth-method %q: want client_secret_post or client_secret_basic", s.clientAuth)
	}
	switch s.previousAccess {
	case "":
	case "revoked":
		spec.PreviousAccessToken = rotavaultv1.PreviousAccessToken_PREVIOUS_ACCESS_TOKEN_REVOKED
	case "kept":
		spec.PreviousAccessToken = rotavaultv1.PreviousAccessToken_PREVIOUS_ACCESS_TOKEN_KEPT
	default:
		return nil, usageErrorf("--previous-access-token %q: want revoked or kept", s.previousAccess)
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
		dst  **durationpb.Duration
	}{
		{"access-token-lifetime", s.accessLifetime, &spec.AccessTokenLifetime},
		{"refresh-idle-timeout", s.refreshIdle, &spec.RefreshTokenIdleTimeout},
		{"refresh-max-lifetime", s.refreshMax, &spec.RefreshTokenMaxLifetime},
		{"reuse-grace", s.reuseGrace, &spec.ReuseGracePeriod},
	} {
		if d.v < 0 {
			return nil, usageErrorf("--%s must not be negative", d.flag)
		}
		if d.v > 0 {
			*d.dst = durationpb.New(d.v)
		}
	}
	if s.clientSecretFile != "" {
		secret, err := a.readSecret(s.clientSecretFile, "client secret")
		if err != nil {
			return nil, err
		}
		spec.ClientSecret = secret
	}
	return spec, nil
}

func parseProvider(s string) (rotavaultv1.ProviderKind, error) {
	switch strings.ToLower(s) {
	case "salesforce":
		return rotavaultv1.ProviderKind_PROVIDER_KIND_SALESFORCE, nil
	case "oauth2":
		return rotavaultv1.ProviderKind_PROVIDER_KIND_OAUTH2, nil
	case "":
		return 0, usageErrorf("--provider is required: salesforce or oauth2")
	default:
		return 0, usageErrorf("--provider %q: must be salesforce or oauth2", s)
	}
}

// updateMask names exactly the spec fields whose flags were set.
func updateMask(fs *pflag.FlagSet) []string {
	var paths []string
	for _, f := range specFields {
		if fs.Changed(f.flag) {
			paths = append(paths, f.path)
		}
	}
	return paths
}

// keyFlags select the store key(s) of the commands that open the store.
type keyFlags struct {
	keyFile      string
	previousKeys []string
}

func (k *keyFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&k.keyFile, "store-key-file", "", "file holding the store key (base64 of 32 bytes, mode 0600); or set "+envStoreKey+" to the key itself")
	fs.StringArrayVar(&k.previousKeys, "store-previous-key-file", nil, "earlier store key still sealing some records (repeatable), until 'rotavault store rotate-key' has run")
	// The offline commands read serve's variables for the same settings.
	bindEnv(fs, "store-key-file", serverEnvName("store-key-file"))
	bindEnv(fs, "store-previous-key-file", serverEnvName("store-previous-key-file"))
}

// load returns the current key and the previous ones. The key comes from
// --store-key-file or ROTAVAULT_SERVER_STORE_KEY, in the order flags >
// environment > config file: a key file named on the command line wins over
// the variable, which wins over a key file named in the config file.
func (k *keyFlags) load(a *app) (boltstore.Key, []boltstore.Key, error) {
	// A copy: forgetEnv overwrites the environment's own bytes, so that
	// neither this process's environment nor /proc/PID/environ holds the
	// key once read.
	inline := strings.Clone(a.env(envStoreKey))
	forgetEnv(envStoreKey)
	var key boltstore.Key
	fileSource := a.sources["store-key-file"]
	switch {
	case k.keyFile != "" && inline != "" && fileSource == sourceEnv:
		return boltstore.Key{}, nil, usageErrorf("both %s and %s are set; keep one", serverEnvName("store-key-file"), envStoreKey)
	case k.keyFile != "" && (inline == "" || fileSource == ""):
		loaded, err := boltstore.LoadKeyFile(k.keyFile)
		if err != nil {
			return boltstore.Key{}, nil, fmt.Errorf("store key: %w", err)
		}
		key = loaded
	case inline != "":
		parsed, err := boltstore.ParseKey(inline)
		if err != nil {
			return boltstore.Key{}, nil, usageErrorf("%s: %v", envStoreKey, err)
		}
		key = parsed
	default:
		return boltstore.Key{}, nil, usageErrorf("a store key is required: --store-key-file FILE or %s; create a key file with `rotavault store generate-key --out FILE`", envStoreKey)
	}
	var previous []boltstore.Key
	for _, path := range k.previousKeys {
		p, err := boltstore.LoadKeyFile(path)
		if err != nil {
			return boltstore.Key{}, nil, fmt.Errorf("previous store key: %w", err)
		}
		previous = append(previous, p)
	}
	return key, previous, nil
}

// logFlags choose the server's log level. serve logs JSON for machines;
// dev logs text for the person at the terminal (human).
type logFlags struct {
	level string
	human bool
}

func (l *logFlags) register(fs *pflag.FlagSet, defaultLevel string) {
	fs.StringVar(&l.level, "log-level", defaultLevel, "debug, info, warn or error")
}

func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.level)); err != nil {
		return nil, usageErrorf("--log-level %q: choose debug, info, warn or error", l.level)
	}
	opts := &slog.HandlerOptions{Level: level}
	if l.human {
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return slog.New(slog.NewJSONHandler(w, opts)), nil
}
