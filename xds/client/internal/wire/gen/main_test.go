package main

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The checked-in trees are what gen writes now: a decoder that starts
// reading a field the cut dropped does not build, but one that stops
// reading a field would leave it in the copies, and a change of
// go-control-plane or protoc-gen-go would go unseen.
func TestGeneratedIsCurrent(t *testing.T) {
	t.Chdir("..") // package wire, where go generate runs gen
	out := t.TempDir()
	if err := generate(out); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	err := filepath.WalkDir(out, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(out, path)
		want[rel] = true
		got, err := os.ReadFile(rel)
		if err != nil {
			t.Errorf("%s is not checked in: run go generate in xds/client/internal/wire", rel)
			return nil
		}
		if gen, _ := os.ReadFile(path); !bytes.Equal(got, gen) {
			t.Errorf("%s differs from what gen writes now: run go generate in xds/client/internal/wire", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".pb.go") {
			return err
		}
		if !want[path] {
			t.Errorf("%s is checked in but gen no longer writes it: delete it", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
