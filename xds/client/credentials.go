package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"

	"google.golang.org/grpc/credentials"

	"github.com/ballast-dev/ballast/internal/keypair"
)

// TokenFile is call credentials that send the token in a file as
// `authorization: Bearer <token>` on every stream. The file is read for
// each stream, not once: a projected ServiceAccount token is rewritten by
// the kubelet before it expires, and a stream opened after that must carry
// the new one.
//
// It does not require a secure transport, unlike grpc-go's own JWT call
// credentials: a sidecar may still reach a control plane that serves
// plaintext, and the token's audience is the control plane's alone, so
// one read off the wire lets its holder see its namespace's Services and
// nothing else (not the Kubernetes API). With a CA file the sidecar
// connects over TLS and the token never crosses the wire in the clear.
type TokenFile string

// GetRequestMetadata reads the token.
func (f TokenFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	b, err := os.ReadFile(string(f))
	if err != nil {
		return nil, fmt.Errorf("xds token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return nil, fmt.Errorf("xds token: %s is empty", f)
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

// RequireTransportSecurity is false: see TokenFile.
func (TokenFile) RequireTransportSecurity() bool { return false }

// tlsCredentials are the transport to a control plane that serves TLS.
// Each handshake builds its config anew from the files, so a rotated CA
// (a ConfigMap volume the kubelet updates) or client key pair is used by
// the next connection, as grpc-go's bootstrap TLS credentials (gRFC A65)
// do with their file watcher.
type tlsCredentials struct {
	roots *keypair.Roots
	pair  *keypair.Files // nil: no client certificate
}

func newTLSCredentials(caFile, certFile, keyFile string, log *slog.Logger) (*tlsCredentials, error) {
	roots, err := keypair.LoadRoots(caFile, log)
	if err != nil {
		return nil, err
	}
	c := &tlsCredentials{roots: roots}
	if certFile != "" || keyFile != "" {
		if c.pair, err = keypair.Load(certFile, keyFile, log); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *tlsCredentials) config() *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: c.roots.Pool()}
	if c.pair != nil {
		cfg.GetClientCertificate = c.pair.GetClientCertificate
	}
	return cfg
}

// ClientHandshake verifies the control plane against the CAs in the file
// now, by the host it was dialled as.
func (c *tlsCredentials) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return credentials.NewTLS(c.config()).ClientHandshake(ctx, authority, conn)
}

func (c *tlsCredentials) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("xds client TLS credentials are a client's")
}

func (c *tlsCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

func (c *tlsCredentials) Clone() credentials.TransportCredentials {
	return &tlsCredentials{roots: c.roots, pair: c.pair}
}

// OverrideServerName is not supported: the name verified is the one
// dialled.
func (c *tlsCredentials) OverrideServerName(string) error {
	return errors.New("xds client TLS credentials verify the name dialled")
}
