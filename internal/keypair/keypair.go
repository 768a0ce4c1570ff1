// Package keypair serves a TLS certificate and key from files, read again
// when they change, so a server's certificate can be rotated (by
// cert-manager, or a Secret volume the kubelet updates) without a restart;
// the same for a file of CA certificates (Roots), which verify the other
// side's; and a small CA (CA) that issues key pairs, for a component that
// makes its own certificates and for tests.
package keypair

import (
	"cmp"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
)

// Files is a key pair on disk. Its GetCertificate, set as a tls.Config's,
// looks at the files on every handshake (two stats) and loads them again
// when either changed: new handshakes see a new certificate at once, and
// established connections keep theirs.
type Files struct {
	certFile, keyFile string
	log               *slog.Logger

	mu         sync.Mutex
	cert       *tls.Certificate
	certInfo   os.FileInfo
	keyInfo    os.FileInfo
	failedInfo [2]os.FileInfo // the pair last refused, not tried again
}

// Load reads the key pair; it fails, naming the files, if they do not make
// one. log receives reloads and refusals; nil means slog.Default().
func Load(certFile, keyFile string, log *slog.Logger) (*Files, error) {
	f := &Files{certFile: certFile, keyFile: keyFile, log: cmp.Or(log, slog.Default()).With("component", "keypair", "cert", certFile)}
	ci, ki, err := f.stat()
	if err != nil {
		return nil, err
	}
	if err := f.load(ci, ki); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *Files) stat() (os.FileInfo, os.FileInfo, error) {
	ci, err := os.Stat(f.certFile)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate: %w", err)
	}
	ki, err := os.Stat(f.keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("key: %w", err)
	}
	return ci, ki, nil
}

// load reads both files; f.mu is held or f is not shared yet.
func (f *Files) load(ci, ki os.FileInfo) error {
	cert, err := tls.LoadX509KeyPair(f.certFile, f.keyFile)
	if err != nil {
		return fmt.Errorf("key pair %s, %s: %w", f.certFile, f.keyFile, err)
	}
	f.cert, f.certInfo, f.keyInfo = &cert, ci, ki
	return nil
}

// same says whether a file is unchanged: the same file (a Secret volume
// swaps in new files; a rename makes a new inode), modification time and
// size.
func same(a, b os.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b) && a.ModTime().Equal(b.ModTime()) && a.Size() == b.Size()
}

// GetCertificate returns the current certificate, loading the files again
// if they changed. A pair that does not load (half-written, or a key that
// does not match) is logged and the last good certificate served, until
// the files change again.
func (f *Files) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return f.current(), nil
}

// GetClientCertificate is GetCertificate for a client's tls.Config: the
// certificate a client presents (mTLS), rotated the same way.
func (f *Files) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return f.current(), nil
}

func (f *Files) current() *tls.Certificate {
	f.mu.Lock()
	defer f.mu.Unlock()
	ci, ki, err := f.stat()
	if err != nil {
		f.log.Warn("cannot see the key pair; serving the last good certificate", "err", err)
		return f.cert
	}
	if same(ci, f.certInfo) && same(ki, f.keyInfo) {
		return f.cert
	}
	if same(ci, f.failedInfo[0]) && same(ki, f.failedInfo[1]) {
		return f.cert
	}
	if err := f.load(ci, ki); err != nil {
		f.failedInfo = [2]os.FileInfo{ci, ki}
		f.log.Error("key pair changed but does not load; serving the last good certificate", "err", err)
		return f.cert
	}
	f.failedInfo = [2]os.FileInfo{}
	if leaf := f.cert.Leaf; leaf != nil {
		f.log.Info("key pair reloaded", "subject", leaf.Subject.CommonName, "uris", leaf.URIs, "not_after", leaf.NotAfter)
	}
	return f.cert
}
