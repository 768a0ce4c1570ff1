package image

import (
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// TestIptablesLayer: the sidecar's image holds iptables as
// `ballast-proxy init` runs it, with what it loads, inside the image.
func TestIptablesLayer(t *testing.T) {
	layer, err := iptablesLayer(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := Unpack(img, root); err != nil {
		t.Fatal(err)
	}
	for _, name := range iptablesPrograms {
		p := filepath.Join(root, "usr/sbin", name)
		target, err := os.Readlink(p)
		if err != nil {
			// The multi-call binary itself, if a name is it.
			if info, serr := os.Stat(p); serr != nil || info.Mode()&0o111 == 0 {
				t.Fatalf("%s: neither a link nor a program: %v", name, err)
			}
			continue
		}
		if strings.Contains(target, "/") {
			t.Errorf("%s links to %s: want a name beside it, so it resolves inside the image", name, target)
		}
		if info, err := os.Stat(filepath.Join(root, "usr/sbin", target)); err != nil || info.Mode()&0o111 == 0 {
			t.Errorf("%s → %s: not an executable in the image (%v)", name, target, err)
		}
	}
	var files []string
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, filepath.Base(p))
		}
		return nil
	})
	for _, want := range []string{"libxtables.so", "libc.so", "libxt_owner.so", "libxt_REDIRECT.so", "libxt_multiport.so"} {
		if !slices.ContainsFunc(files, func(f string) bool { return strings.HasPrefix(f, want) }) {
			t.Errorf("the image has no %s*; iptables needs it", want)
		}
	}
}

// TestLoaderLayer: a dynamically linked program's image gets its loader
// (PT_INTERP) and libc at their paths; a static one gets no layer.
func TestLoaderLayer(t *testing.T) {
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(sh)
	if err != nil {
		t.Fatal(err)
	}
	var interp string
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				t.Fatal(err)
			}
			interp = strings.TrimRight(string(b), "\x00")
		}
	}
	f.Close()
	if interp == "" {
		t.Skipf("%s is static here", sh)
	}
	layer, err := loaderLayer(context.Background(), sh)
	if err != nil || layer == nil {
		t.Fatalf("loaderLayer(%s) = %v, %v; want a layer", sh, layer, err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := Unpack(img, root); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, interp)); err != nil {
		t.Errorf("the loader %s is not in the image: %v", interp, err)
	}
	libc, _ := filepath.Glob(filepath.Join(root, "*/*/libc.so.*"))
	more, _ := filepath.Glob(filepath.Join(root, "*/*/*/libc.so.*"))
	if len(libc)+len(more) == 0 {
		t.Error("no libc.so.* in the image")
	}

	static := filepath.Join(t.TempDir(), "static")
	build := exec.Command("go", "build", "-o", static, "./testdata/hello")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if layer, err := loaderLayer(context.Background(), static); err != nil || layer != nil {
		t.Errorf("loaderLayer(static) = %v, %v; want nil, nil", layer, err)
	}
}
