package keypair

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pair is a self-signed certificate for 127.0.0.1 named cn, as PEM.
func pair(t *testing.T, cn string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// write replaces a file as a certificate manager does: a new file renamed
// over the old.
func write(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestRotation: a TLS listener serving through Files hands new handshakes
// the certificate now in the files, with no restart; a pair that does not
// load leaves the last good one served.
func TestRotation(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	c1, k1 := pair(t, "first")
	write(t, certFile, c1)
	write(t, keyFile, k1)
	files, err := Load(certFile, keyFile, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{GetCertificate: files.GetCertificate, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() { c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	served := func() string {
		t.Helper()
		conn, err := tls.Dial("tcp", lis.Addr().String(), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
	}

	c2, k2 := pair(t, "second")
	_, k3 := pair(t, "third")
	steps := []struct {
		name       string
		cert, key  []byte
		wantServed string
	}{
		{"at start", nil, nil, "first"},
		{"rotated", c2, k2, "second"},
		{"half-written: a key that is not the certificate's", nil, k3, "second"},
		{"garbage", []byte("not a certificate"), nil, "second"},
		{"mended", c2, k2, "second"},
		{"rotated back", c1, k1, "first"},
	}
	for _, s := range steps {
		if s.cert != nil {
			write(t, certFile, s.cert)
		}
		if s.key != nil {
			write(t, keyFile, s.key)
		}
		if got := served(); got != s.wantServed {
			t.Fatalf("%s: served %q, want %q", s.name, got, s.wantServed)
		}
	}
}

func TestLoadNamesTheFiles(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if _, err := Load(certFile, keyFile, nil); err == nil || !strings.Contains(err.Error(), "tls.crt") {
		t.Errorf("no files: %v; want an error naming tls.crt", err)
	}
	write(t, certFile, []byte("x"))
	write(t, keyFile, []byte("y"))
	if _, err := Load(certFile, keyFile, nil); err == nil || !strings.Contains(err.Error(), certFile) {
		t.Errorf("bad files: %v; want an error naming %s", err, certFile)
	}
}
