package control

import (
	"crypto/tls"
	"errors"
	"log/slog"

	"github.com/ballast-dev/ballast/internal/keypair"
)

// TLSFiles are the files the xDS listener's TLS is made of.
type TLSFiles struct {
	// Cert and Key are the serving key pair (a Secret volume's tls.crt
	// and tls.key), read again when they change.
	Cert, Key string
	// ClientCA, when set, holds the CAs whose client certificates are
	// verified (mTLS), read again when it changes. Clients without a
	// certificate still connect: they may prove who they are with a token,
	// and are told what is missing with a gRPC status rather than a
	// failed handshake.
	ClientCA string
}

// ServerTLS is the xDS listener's TLS config from files. A new key pair
// or CA file is used from the next handshake on: established streams keep
// theirs, and a client reconnecting meets the new certificate.
func ServerTLS(f TLSFiles, log *slog.Logger) (*tls.Config, error) {
	if f.Cert == "" || f.Key == "" {
		return nil, errors.New("TLS: a certificate and a key file are both needed")
	}
	pair, err := keypair.Load(f.Cert, f.Key, log)
	if err != nil {
		return nil, err
	}
	return ServerTLSFor(pair.GetCertificate, f.ClientCA, log)
}

// ServerTLSFor is ServerTLS with the serving certificate from getCert
// (servingcert's, say), called on every handshake.
func ServerTLSFor(getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error), clientCA string, log *slog.Logger) (*tls.Config, error) {
	base := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: getCert,
		// gRPC speaks HTTP/2 only; grpc-go clients require the ALPN.
		NextProtos: []string{"h2"},
	}
	if clientCA == "" {
		return base, nil
	}
	roots, err := keypair.LoadRoots(clientCA, log)
	if err != nil {
		return nil, err
	}
	cfg := base.Clone()
	// A config per handshake, so a changed CA file verifies the next
	// client; the standard library verifies against ClientCAs only.
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := base.Clone()
		c.ClientAuth = tls.VerifyClientCertIfGiven
		c.ClientCAs = roots.Pool()
		return c, nil
	}
	return cfg, nil
}
