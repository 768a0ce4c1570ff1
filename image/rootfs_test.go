package image

import (
	"os"
	"path/filepath"
	"testing"
)

// TestRootFS unpacks the built image as the dev cluster would run it: the
// entrypoint is an executable file at its path, /tmp is sticky and
// world-writable, and a second call reuses the unpacked digest.
func TestRootFS(t *testing.T) {
	built := buildHello(t)
	idx := built[0].Index
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	img, err := idx.Image(m.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	root, err := RootFS(cache, img)
	if err != nil {
		t.Fatal(err)
	}
	entry := filepath.Join(root, built[0].Spec.Entrypoint()[0])
	fi, err := os.Stat(entry)
	if err != nil {
		t.Fatalf("entrypoint: %v", err)
	}
	if fi.Mode()&0o111 == 0 {
		t.Errorf("entrypoint %s mode %v, not executable", entry, fi.Mode())
	}
	ti, err := os.Stat(filepath.Join(root, "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	if ti.Mode()&os.ModeSticky == 0 || ti.Mode().Perm() != 0o777 {
		t.Errorf("/tmp mode %v, want sticky 0777", ti.Mode())
	}
	again, err := RootFS(cache, img)
	if err != nil || again != root {
		t.Errorf("second RootFS = %q, %v; want %q reused", again, err, root)
	}
}
