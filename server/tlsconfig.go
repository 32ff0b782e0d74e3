package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

// tlsMaterial is one loaded generation of the server's certificate and
// client CA, swapped whole on reload.
type tlsMaterial struct {
	config *tls.Config
}

// loadTLSMaterial builds the per-connection TLS config. requireClientCert
// demands a verified client certificate; otherwise one is verified if
// given, so bearer-token callers can connect too.
func loadTLSMaterial(certFile, keyFile, clientCAFile string, requireClientCert bool) (*tlsMaterial, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		// LoadX509KeyPair's errors name files and formats, never key bytes.
		return nil, fmt.Errorf("load server certificate: %w", err)
	}
	cfg := &tls.Config{
		// TLS 1.2+ with Go's default suites: FIPS-acceptable.
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		// Returned from GetConfigForClient, this config is the one the
		// handshake uses, so it must offer h2 itself: gRPC requires ALPN.
		NextProtos: []string{"h2"},
		ClientAuth: tls.NoClientCert,
	}
	if clientCAFile != "" {
		pem, err := os.ReadFile(clientCAFile)
		if err != nil {
			return nil, fmt.Errorf("read client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("client CA %s: no PEM certificate in it", clientCAFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		if requireClientCert {
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	return &tlsMaterial{config: cfg}, nil
}

// CertificateIdentity names the holder of a verified client certificate:
// its URI SAN (a SPIFFE ID) as it is, else "dns:" and its first DNS SAN,
// else "cn:" and its subject CN.
//
// The prefixes keep names a CA put in a certificate apart from the
// identities of the bearer-tokens file: a certificate whose CN is "admin"
// is "cn:admin", not the bearer identity "admin" (bearer identities may not
// contain ":" unless they are URIs, see ParseTokens). URIs name themselves
// in both: a SPIFFE ID is the same identity whether a certificate or a
// token proves it. For the same reason a DNS SAN or CN that could pass for
// a URI ("spiffe://…/admin" typed into the CN of an enterprise CA's
// request form) is refused, and so is a URI SAN in the reserved schemes
// "dns" and "cn". A certificate with several URI SANs is ambiguous (an
// X.509 SVID has exactly one) and a URI with dot segments, an empty
// segment, escapes, a query, a fragment or user info is not canonical, so
// a prefix rule ("…/ns/a/*") cannot be made to match "…/ns/a/../b": both
// are refused.
func CertificateIdentity(cert *x509.Certificate) (string, error) {
	switch {
	case cert == nil:
		return "", errors.New("no certificate")
	case len(cert.URIs) > 1:
		return "", fmt.Errorf("the certificate has %d URI SANs; an identity needs exactly one", len(cert.URIs))
	case len(cert.URIs) == 1:
		if err := checkURIIdentity(cert.URIs[0]); err != nil {
			return "", err
		}
		return cert.URIs[0].String(), nil
	case len(cert.DNSNames) > 0:
		return nameIdentity("DNS SAN", DNSIdentityPrefix, cert.DNSNames[0])
	case cert.Subject.CommonName != "":
		return nameIdentity("subject CN", CNIdentityPrefix, cert.Subject.CommonName)
	default:
		return "", errors.New("the certificate names no identity (no URI or DNS SAN, no CN)")
	}
}

// Prefixes of certificate identities taken from a DNS SAN or the subject
// CN: a policy names the certificate with DNS SAN ops.example.org as
// "dns:ops.example.org".
const (
	DNSIdentityPrefix = "dns:"
	CNIdentityPrefix  = "cn:"
)

func checkURIIdentity(u *url.URL) error {
	switch {
	case u.Scheme == "":
		return errors.New("URI SAN: not an absolute URI")
	case strings.EqualFold(u.Scheme+":", DNSIdentityPrefix) || strings.EqualFold(u.Scheme+":", CNIdentityPrefix):
		return fmt.Errorf("URI SAN: the scheme %q is reserved for DNS SAN and CN identities", u.Scheme)
	case u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.RawFragment != "":
		return errors.New("URI SAN: user info, query and fragment are not allowed in an identity")
	case u.RawPath != "" || strings.Contains(u.Opaque, "%"):
		return errors.New("URI SAN: percent-escapes are not allowed in an identity")
	case u.Opaque != "":
		return nil
	}
	if u.Path == "" {
		return nil
	}
	for seg := range strings.SplitSeq(strings.TrimPrefix(u.Path, "/"), "/") {
		if seg == "" || seg == "." || seg == ".." {
			return errors.New("URI SAN: empty, . and .. path segments are not allowed in an identity")
		}
	}
	return nil
}

func nameIdentity(what, prefix, name string) (string, error) {
	if strings.ContainsAny(name, ":/") {
		return "", fmt.Errorf("%s: a name identity must not contain : or /, which would let it pass for a URI identity", what)
	}
	for _, r := range name {
		if r <= ' ' || r == 0x7f {
			return "", fmt.Errorf("%s: spaces and control characters are not allowed in an identity", what)
		}
	}
	return prefix + name, nil
}

// ClientCASource yields the client CAs in force now (nil: none).
type ClientCASource interface {
	ClientCAs() *x509.CertPool
}

// maxTrustCacheEntries bounds the cache of verified client chains; past it
// the cache starts afresh, which costs re-verifications, not correctness.
const maxTrustCacheEntries = 4096

// trustCache re-verifies a connection's client certificate at each call,
// against the client CAs and the clock of that call: the TLS handshake
// checked them once, but an HTTP/2 connection lives as long as its client
// keeps it busy, so a CA removed from the bundle or an expired certificate
// would otherwise keep authenticating it. A chain verified under one pool
// stays good until the first of its certificates expires, so each
// connection pays for one verification per CA generation, not per call.
type trustCache struct {
	mu      sync.Mutex
	entries map[trustKey]time.Time
}

type trustKey struct {
	pool *x509.CertPool
	leaf *x509.Certificate
}

func (c *trustCache) verify(pool *x509.CertPool, peerCerts []*x509.Certificate, now time.Time) error {
	if pool == nil {
		return errors.New("client certificates are no longer accepted (no client CA)")
	}
	if len(peerCerts) == 0 {
		return errors.New("no client certificate")
	}
	k := trustKey{pool: pool, leaf: peerCerts[0]}
	c.mu.Lock()
	until, ok := c.entries[k]
	c.mu.Unlock()
	if ok && now.Before(until) {
		return nil
	}
	intermediates := x509.NewCertPool()
	for _, ic := range peerCerts[1:] {
		intermediates.AddCert(ic)
	}
	chains, err := peerCerts[0].Verify(x509.VerifyOptions{
		Roots: pool, Intermediates: intermediates, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return fmt.Errorf("client certificate no longer verifies against the client CA: %w", err)
	}
	until = peerCerts[0].NotAfter
	for _, cert := range chains[0] {
		if cert.NotAfter.Before(until) {
			until = cert.NotAfter
		}
	}
	c.mu.Lock()
	if c.entries == nil || len(c.entries) >= maxTrustCacheEntries {
		c.entries = make(map[trustKey]time.Time)
	}
	c.entries[k] = until
	c.mu.Unlock()
	return nil
}
