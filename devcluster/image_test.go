package devcluster

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// echoImage lays out a directory as tools/build-istio-echo.sh does.
func echoImage(t *testing.T) ImageDir {
	t.Helper()
	root := t.TempDir()
	for name, mode := range map[string]os.FileMode{
		"usr/local/bin/server": 0o755,
		"usr/local/bin/client": 0o755,
		"usr/local/bin/notes":  0o644, // on PATH but not executable
		"cert.crt":             0o644,
		"etc/echo/cert.key":    0o600,
	} {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(name), mode); err != nil {
			t.Fatal(err)
		}
	}
	return ImageDir{Root: root, Entrypoint: "/usr/local/bin/server"}
}

func TestImageDirCommand(t *testing.T) {
	echo := echoImage(t)
	a := &agent{images: map[string]string{"ballast:dev": "/tmp/build/ballast"}, dirs: map[string]ImageDir{"echo:v1": echo}}
	bin := func(name string) string { return filepath.Join(echo.Root, "usr", "local", "bin", name) }
	tests := []struct {
		name string
		c    corev1.Container
		want []string
		err  bool
	}{
		{"args only: the entrypoint",
			corev1.Container{Image: "echo:v1", Args: []string{"--grpc=7070"}},
			[]string{bin("server"), "--grpc=7070"}, false},
		{"another program of the image by name, as exec runs it",
			corev1.Container{Image: "echo:v1", Command: []string{"client", "grpc://echo:7070"}},
			[]string{bin("client"), "grpc://echo:7070"}, false},
		{"a program by its path in the image",
			corev1.Container{Image: "echo:v1", Command: []string{"/usr/local/bin/client"}},
			[]string{bin("client")}, false},
		{"a program by a path the image does not have it at runs from the host",
			corev1.Container{Image: "echo:v1", Command: []string{"/bin/sh", "-c", "true"}},
			[]string{"/bin/sh", "-c", "true"}, false},
		{"a file that is not executable is no program",
			corev1.Container{Image: "echo:v1", Command: []string{"notes"}}, nil, true},
		{"a data file is no program",
			corev1.Container{Image: "echo:v1", Command: []string{"/cert.crt"}}, nil, true},
		{"another image's programs are not this one's",
			corev1.Container{Image: "ballast:dev", Command: []string{"client"}}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := a.command(tt.c)
			if tt.err {
				if err == nil {
					t.Fatalf("want error, got %v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestImageDirFiles(t *testing.T) {
	echo := echoImage(t)
	files, err := echo.files()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range files {
		got = append(got, f[0])
		if want := filepath.Join(echo.Root, strings.TrimPrefix(f[0], "/")); f[1] != want {
			t.Errorf("%s: host file %s, want %s", f[0], f[1], want)
		}
	}
	// The programs' directory is not bound: they run from the host.
	if want := []string{"/cert.crt", "/etc/echo/cert.key"}; !slices.Equal(got, want) {
		t.Fatalf("files bound in the container: %v, want %v", got, want)
	}
}
