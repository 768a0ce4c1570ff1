package keypair

import (
	"cmp"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
)

// Roots is a PEM file of CA certificates, read again when it changes: the
// CAs a server verifies client certificates with, or a client the
// server's. A ConfigMap volume the kubelet updates, or a rotated CA bundle,
// is picked up by the next handshake.
type Roots struct {
	file string
	log  *slog.Logger

	mu     sync.Mutex
	pool   *x509.CertPool
	info   os.FileInfo
	failed os.FileInfo // the file last refused, not tried again
}

// LoadRoots reads the file; it fails, naming it, if it holds no
// certificate. log receives reloads and refusals; nil means slog.Default().
func LoadRoots(file string, log *slog.Logger) (*Roots, error) {
	r := &Roots{file: file, log: cmp.Or(log, slog.Default()).With("component", "keypair", "roots", file)}
	fi, err := os.Stat(file)
	if err != nil {
		return nil, fmt.Errorf("CA certificates: %w", err)
	}
	if err := r.load(fi); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Roots) load(fi os.FileInfo) error {
	data, err := os.ReadFile(r.file)
	if err != nil {
		return fmt.Errorf("CA certificates: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return fmt.Errorf("CA certificates %s: no PEM certificate in the file", r.file)
	}
	r.pool, r.info = pool, fi
	return nil
}

// Pool returns the certificates now in the file, reading it again if it
// changed. A file that no longer holds a certificate (half-written) is
// logged and the last good pool returned, until the file changes again.
func (r *Roots) Pool() *x509.CertPool {
	r.mu.Lock()
	defer r.mu.Unlock()
	fi, err := os.Stat(r.file)
	if err != nil {
		r.log.Warn("cannot see the CA certificates; using the last good ones", "err", err)
		return r.pool
	}
	if same(fi, r.info) || same(fi, r.failed) {
		return r.pool
	}
	if err := r.load(fi); err != nil {
		r.failed = fi
		r.log.Error("CA certificates changed but do not load; using the last good ones", "err", err)
		return r.pool
	}
	r.failed = nil
	r.log.Info("CA certificates reloaded")
	return r.pool
}
