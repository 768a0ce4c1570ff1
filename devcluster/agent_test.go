package devcluster

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestContainerCommand(t *testing.T) {
	a := &agent{images: map[string]string{"ballast:dev": "/tmp/build/ballast"}}
	tests := []struct {
		name string
		c    corev1.Container
		want []string
		err  bool
	}{
		{"args only: the image's binary is the entrypoint",
			corev1.Container{Image: "ballast:dev", Args: []string{"greeter", "serve"}},
			[]string{"/tmp/build/ballast", "greeter", "serve"}, false},
		{"command names the image's binary by base name",
			corev1.Container{Image: "ballast:dev", Command: []string{"ballast", "greeter"}, Args: []string{"client"}},
			[]string{"/tmp/build/ballast", "greeter", "client"}, false},
		{"command names it by an image path",
			corev1.Container{Image: "ballast:dev", Command: []string{"/usr/local/bin/ballast", "proxy"}},
			[]string{"/tmp/build/ballast", "proxy"}, false},
		{"other commands run from the host's PATH",
			corev1.Container{Image: "ballast:dev", Command: []string{"sh", "-c", "true"}},
			[]string{"/usr/bin/sh", "-c", "true"}, false},
		{"an unknown image without a command is an error",
			corev1.Container{Image: "nginx:1.27"}, nil, true},
		{"a missing program is an error",
			corev1.Container{Image: "x", Command: []string{"no-such-program-here"}}, nil, true},
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
			if tt.want[0] == "/usr/bin/sh" && len(got) > 0 && got[0] == "/bin/sh" {
				tt.want[0] = "/bin/sh" // PATH order differs between machines
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}
