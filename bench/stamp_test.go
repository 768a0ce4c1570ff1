package bench

import (
	"os"
	"path/filepath"
	"testing"
)

// The stamp covers the data path's code and nothing else: a test file or
// a file outside dataPathDirs leaves it alone; a change to the code or a
// new file does not.
func TestDataPathStamp(t *testing.T) {
	root := t.TempDir()
	write := func(path, text string) {
		t.Helper()
		path = filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	stamp := func() string {
		t.Helper()
		s, err := dataPathStamp(root)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for _, dir := range dataPathDirs {
		write(filepath.Join(dir, "a.go"), "package a\n")
	}
	base := stamp()
	for _, tt := range []struct {
		path, text string
		changes    bool
	}{
		{"proxy/a_test.go", "package a\n// a test\n", false},
		{"proxy/testdata/x.go", "package x\n", false},
		{"xds/server.go", "package xds\n", false},
		{"bench/bench.go", "package bench\n", false},
		{"proxy/a.go", "package a\n// changed\n", true},
		{"balancer/p2c/p2c.go", "package p2c\n", true},
	} {
		write(tt.path, tt.text)
		if got := stamp(); (got != base) != tt.changes {
			t.Errorf("after writing %s: stamp %s, base %s; want changed %v", tt.path, got, base, tt.changes)
		}
		base = stamp()
	}
	if root := checkoutRoot(filepath.Join(root, "proxy")); root != "" {
		t.Errorf("checkoutRoot found %s without a go.mod of %s", root, module)
	}
}
