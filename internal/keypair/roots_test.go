package keypair

import (
	"crypto/x509"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"
)

// TestRootsReload: a CA file replaced on disk verifies the next
// certificate; one replaced with no certificate in it keeps the last good
// pool.
func TestRootsReload(t *testing.T) {
	one, err := NewCA("one", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	two, err := NewCA("two", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "ca.crt")
	write(t, file, one.CertPEM)
	roots, err := LoadRoots(file, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	verifies := func(ca *CA) bool {
		_, err := ca.Cert.Verify(x509VerifyOptions(roots))
		return err == nil
	}
	steps := []struct {
		name     string
		content  []byte
		one, two bool
	}{
		{"first CA", nil, true, false},
		{"rotated to both", append(append([]byte{}, one.CertPEM...), two.CertPEM...), true, true},
		{"half-written: last good kept", []byte("-----BEGIN CERT"), true, true},
		{"second only", two.CertPEM, false, true},
	}
	for _, s := range steps {
		if s.content != nil {
			write(t, file, s.content)
		}
		if verifies(one) != s.one || verifies(two) != s.two {
			t.Fatalf("%s: verifies one %v two %v; want %v %v", s.name, verifies(one), verifies(two), s.one, s.two)
		}
	}
	if _, err := LoadRoots(filepath.Join(t.TempDir(), "none"), nil); err == nil {
		t.Fatal("LoadRoots of a missing file: no error")
	}
}

func x509VerifyOptions(r *Roots) x509.VerifyOptions { return x509.VerifyOptions{Roots: r.Pool()} }
