package image

import (
	"context"
	"net"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

var hello = []Spec{
	{Name: "hello", Package: "./image/testdata/hello", Binary: "hello"},
	{Name: "hello-args", Package: "./image/testdata/hello", Binary: "hello", Args: []string{"serve"}},
}

var helloOnce = sync.OnceValues(func() ([]Built, error) { return build() })

// buildHello builds the test images once per test run: cross-compiling
// for two platforms is the slow part.
func buildHello(t *testing.T) []Built {
	t.Helper()
	built, err := helloOnce()
	if err != nil {
		t.Fatal(err)
	}
	return built
}

func build() ([]Built, error) {
	module, err := filepath.Abs("..")
	if err != nil {
		return nil, err
	}
	return Build(context.Background(), Options{Module: module, Specs: hello, Source: DefaultSource, Version: "v9.9.9", Revision: "abc123"})
}

// TestPushPull pushes the indexes to go-containerregistry's registry on
// 127.0.0.1, pulls them back and checks what a runtime reads.
func TestPushPull(t *testing.T) {
	built := buildHello(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(registry.New())
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	defer srv.Close()
	prefix := strings.TrimPrefix(srv.URL, "http://") + "/ballast"
	ctx := context.Background()
	if err := Push(ctx, prefix, "t1", built); err != nil {
		t.Fatal(err)
	}
	for _, s := range hello {
		ref := prefix + "/" + s.Name + ":t1"
		r, err := name.ParseReference(ref)
		if err != nil {
			t.Fatal(err)
		}
		idx, err := remote.Index(r)
		if err != nil {
			t.Fatalf("pull %s: %v", ref, err)
		}
		m, err := idx.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		var platforms []string
		for _, d := range m.Manifests {
			platforms = append(platforms, d.Platform.String())
		}
		if want := []string{"linux/amd64", "linux/arm64"}; !slices.Equal(platforms, want) {
			t.Errorf("%s: platforms %v, want %v", ref, platforms, want)
		}
		checkConfigs(t, ref, s, mustInspect(t, ref), 2)
	}
}

// TestArchive writes the OCI layout archive and reads each image back.
func TestArchive(t *testing.T) {
	built := buildHello(t)
	path := filepath.Join(t.TempDir(), "images.tar")
	if err := WriteArchive(path, "example.test/ballast", "t2", built); err != nil {
		t.Fatal(err)
	}
	cs := mustInspect(t, path)
	if len(cs) != 4 {
		t.Fatalf("archive holds %d images, want 4 (2 names × 2 platforms)", len(cs))
	}
	for _, s := range hello {
		var mine []Config
		for _, c := range cs {
			if c.Name == "example.test/ballast/"+s.Name+":t2" {
				mine = append(mine, c)
			}
		}
		checkConfigs(t, path, s, mine, 2)
	}
}

func mustInspect(t *testing.T, src string) []Config {
	t.Helper()
	cs, err := Inspect(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func checkConfigs(t *testing.T, src string, s Spec, cs []Config, n int) {
	t.Helper()
	if len(cs) != n {
		t.Fatalf("%s %s: %d images, want %d", src, s.Name, len(cs), n)
	}
	for _, c := range cs {
		if got, want := c.Config.Entrypoint, s.Entrypoint(); !slices.Equal(got, want) {
			t.Errorf("%s %s: entrypoint %q, want %q", src, c.Platform, got, want)
		}
		if c.Config.User != User || strings.HasPrefix(c.Config.User, "0") {
			t.Errorf("%s %s: user %q, want %q", src, c.Platform, c.Config.User, User)
		}
		for k, v := range map[string]string{LabelVersion: "v9.9.9", LabelRevision: "abc123", LabelSource: DefaultSource} {
			if c.Config.Labels[k] != v {
				t.Errorf("%s %s: label %s = %q, want %q", src, c.Platform, k, c.Config.Labels[k], v)
			}
		}
	}
}

// TestReproducible: two builds of one tree are the same images, so CI and a
// user building the same commit publish the same digests.
func TestReproducible(t *testing.T) {
	a := buildHello(t)
	b, err := build()
	if err != nil {
		t.Fatal(err)
	}
	for i := range a {
		da, err := a[i].Index.Digest()
		if err != nil {
			t.Fatal(err)
		}
		db, err := b[i].Index.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if da != db {
			t.Errorf("%s: digests %s and %s from one tree", a[i].Spec.Name, da, db)
		}
	}
}
