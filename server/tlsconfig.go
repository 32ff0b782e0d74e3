package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
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
// its first URI SAN (a SPIFFE ID), else its first DNS SAN, else its
// subject CN.
func CertificateIdentity(cert *x509.Certificate) (string, error) {
	switch {
	case cert == nil:
		return "", errors.New("no certificate")
	case len(cert.URIs) > 0:
		return cert.URIs[0].String(), nil
	case len(cert.DNSNames) > 0:
		return cert.DNSNames[0], nil
	case cert.Subject.CommonName != "":
		return cert.Subject.CommonName, nil
	default:
		return "", errors.New("the certificate names no identity (no URI or DNS SAN, no CN)")
	}
}
