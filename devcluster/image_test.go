package devcluster

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	corev1 "k8s.io/api/core/v1"
)

// unpacked lays out an image's root as image.RootFS leaves it.
func unpacked(t *testing.T, cfg v1.Config) *pulledImage {
	t.Helper()
	root := t.TempDir()
	for name, mode := range map[string]os.FileMode{
		"usr/local/bin/ballast":      0o755,
		"usr/sbin/xtables-nft-multi": 0o755,
		"usr/local/bin/notes":        0o644, // on PATH but not executable
		"cert.crt":                   0o644,
	} {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(name), mode); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{
		"usr/sbin/iptables-restore": "xtables-nft-multi",            // relative, as the sidecar's image has it
		"usr/sbin/iptables":         "/usr/sbin/xtables-nft-multi",  // absolute: inside the image, not the host
		"usr/sbin/outside":          "../../../../../../etc/passwd", // cannot climb out of the root
	} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	return &pulledImage{ref: "ballast:dev", root: root, config: cfg}
}

func TestImageCommand(t *testing.T) {
	img := unpacked(t, v1.Config{
		Entrypoint: []string{"/usr/local/bin/ballast", "greeter"},
		Cmd:        []string{"serve"},
		Env:        []string{"PATH=/usr/local/bin:/usr/sbin"},
	})
	tests := []struct {
		name string
		c    corev1.Container
		want []string
		err  string
	}{
		{"neither: entrypoint and cmd",
			corev1.Container{}, []string{"/usr/local/bin/ballast", "greeter", "serve"}, ""},
		{"args replace cmd",
			corev1.Container{Args: []string{"client", "--calls", "1"}}, []string{"/usr/local/bin/ballast", "greeter", "client", "--calls", "1"}, ""},
		{"command replaces entrypoint and drops cmd, found on the image's PATH",
			corev1.Container{Command: []string{"ballast", "proxy"}}, []string{"/usr/local/bin/ballast", "proxy"}, ""},
		{"command and args",
			corev1.Container{Command: []string{"ballast"}, Args: []string{"inject"}}, []string{"/usr/local/bin/ballast", "inject"}, ""},
		{"a relative symlink in the image",
			corev1.Container{Command: []string{"iptables-restore"}}, []string{"/usr/sbin/iptables-restore"}, ""},
		{"an absolute symlink resolves inside the image",
			corev1.Container{Command: []string{"iptables"}}, []string{"/usr/sbin/iptables"}, ""},
		{"the host's programs are not the image's",
			corev1.Container{Command: []string{"sh", "-c", "true"}}, nil, `has no program "sh"`},
		{"nor by the host's path",
			corev1.Container{Command: []string{"/bin/sh"}}, nil, `has no program "/bin/sh"`},
		{"a file that is not executable is no program",
			corev1.Container{Command: []string{"notes"}}, nil, `has no program "notes"`},
		{"a data file is no program",
			corev1.Container{Command: []string{"/cert.crt"}}, nil, `has no program "/cert.crt"`},
		{"a symlink out of the root stays in it",
			corev1.Container{Command: []string{"outside"}}, nil, `has no program "outside"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := img.argv(tt.c)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), "ballast:dev") {
					t.Fatalf("err = %v (argv %q), want one naming the image and %s", err, got, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("argv %q, want %q", got, tt.want)
			}
		})
	}
}

func TestImageUser(t *testing.T) {
	i64 := func(v int64) *int64 { return &v }
	yes := true
	tests := []struct {
		name      string
		imageUser string
		pod       *corev1.PodSecurityContext
		c         *corev1.SecurityContext
		uid, gid  int64
		err       string
	}{
		{"the image's user", "65532:65532", nil, nil, 65532, 65532, ""},
		{"the image's uid alone: gid 0", "1000", nil, nil, 1000, 0, ""},
		{"no user: root", "", nil, nil, 0, 0, ""},
		{"runAsUser replaces the image's user, gid 0", "65532:65532", nil, &corev1.SecurityContext{RunAsUser: i64(1337)}, 1337, 0, ""},
		{"the pod's runAsUser too", "65532:65532", &corev1.PodSecurityContext{RunAsUser: i64(7)}, nil, 7, 0, ""},
		{"runAsGroup alone keeps the image's uid", "65532:65532", nil, &corev1.SecurityContext{RunAsGroup: i64(9)}, 65532, 9, ""},
		{"runAsNonRoot holds with the image's non-root user", "65532:65532", &corev1.PodSecurityContext{RunAsNonRoot: &yes}, nil, 65532, 65532, ""},
		{"runAsNonRoot refuses an image without a user", "", &corev1.PodSecurityContext{RunAsNonRoot: &yes}, nil, 0, 0, "runAsNonRoot"},
		{"a user name needs a passwd file", "nonroot", nil, nil, 0, 0, "only numeric"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := &pulledImage{ref: "x:1", config: v1.Config{User: tt.imageUser}}
			pod := &corev1.Pod{Spec: corev1.PodSpec{SecurityContext: tt.pod}}
			u, err := containerUser(pod, corev1.Container{Name: "app", SecurityContext: tt.c}, img)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if u.uid != tt.uid || u.gid != tt.gid {
				t.Fatalf("runs as %d:%d, want %d:%d", u.uid, u.gid, tt.uid, tt.gid)
			}
		})
	}
}

func TestChrootArgv(t *testing.T) {
	tools := hostTools{chroot: "/usr/sbin/chroot", setpriv: "/usr/bin/setpriv"}
	for _, tt := range []struct {
		u    user
		want []string
	}{
		{user{}, []string{"/usr/sbin/chroot"}},
		{user{uid: 65532, gid: 65532}, []string{"/usr/sbin/chroot", "--userspec=65532:65532"}},
		{user{uid: 1337, gid: 0, groups: []int64{5, 6}}, []string{"/usr/sbin/chroot", "--userspec=1337:0", "--groups=5,6"}},
		{user{uid: 1337, noNewPrivs: true}, []string{"/usr/bin/setpriv", "--no-new-privs", "--", "/usr/sbin/chroot", "--userspec=1337:0"}},
	} {
		if got := tools.chrootArgv(tt.u); !slices.Equal(got, tt.want) {
			t.Errorf("%+v: %q, want %q", tt.u, got, tt.want)
		}
	}
}

func TestRegistryMirror(t *testing.T) {
	r := &imageRegistry{addr: "127.0.0.1:5000"}
	for ref, want := range map[string]string{
		"ballast:dev": "127.0.0.1:5000/ballast:dev",
		"registry.k8s.io/gateway-api/echo-advanced:v1.5.1": "127.0.0.1:5000/gateway-api/echo-advanced:v1.5.1",
		"ghcr.io/ballast-dev/ballast-proxy:v1.2.0":         "127.0.0.1:5000/ballast-dev/ballast-proxy:v1.2.0",
		"ballast@sha256:" + strings.Repeat("a", 64):        "127.0.0.1:5000/ballast@sha256:" + strings.Repeat("a", 64),
	} {
		got, err := r.mirror(ref)
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		if got.String() != want {
			t.Errorf("%s is pulled from %s, want %s", ref, got, want)
		}
	}
	if _, err := r.mirror("UPPER:case"); err == nil {
		t.Error("an invalid reference was taken")
	}
}
