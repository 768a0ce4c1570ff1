package devcluster

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestContainerUser(t *testing.T) {
	i64 := func(v int64) *int64 { return &v }
	yes, no := true, false
	tests := []struct {
		name string
		pod  *corev1.PodSecurityContext
		c    *corev1.SecurityContext
		want []string // argv for /bin/app after wrap
		err  string
	}{
		{"no securityContext: root, argv unchanged", nil, nil, []string{"/bin/app"}, ""},
		{"explicit root: unchanged", nil, &corev1.SecurityContext{RunAsUser: i64(0)}, []string{"/bin/app"}, ""},
		{"container uid, gid 0 as runtimes give a numeric uid",
			nil, &corev1.SecurityContext{RunAsUser: i64(1337)},
			[]string{"setpriv", "--reuid=1337", "--regid=0", "--clear-groups", "--", "/bin/app"}, ""},
		{"pod uid and group, supplementary groups",
			&corev1.PodSecurityContext{RunAsUser: i64(65532), RunAsGroup: i64(65532), SupplementalGroups: []int64{5, 6}}, nil,
			[]string{"setpriv", "--reuid=65532", "--regid=65532", "--groups=5,6", "--", "/bin/app"}, ""},
		{"container overrides pod",
			&corev1.PodSecurityContext{RunAsUser: i64(65532), RunAsGroup: i64(65532)}, &corev1.SecurityContext{RunAsUser: i64(1337), RunAsGroup: i64(1337)},
			[]string{"setpriv", "--reuid=1337", "--regid=1337", "--clear-groups", "--", "/bin/app"}, ""},
		{"allowPrivilegeEscalation false sets no_new_privs",
			nil, &corev1.SecurityContext{RunAsUser: i64(1337), AllowPrivilegeEscalation: &no},
			[]string{"setpriv", "--reuid=1337", "--regid=0", "--clear-groups", "--no-new-privs", "--", "/bin/app"}, ""},
		{"container runs as root on purpose in a non-root pod",
			&corev1.PodSecurityContext{RunAsUser: i64(1337), RunAsNonRoot: &yes}, &corev1.SecurityContext{RunAsUser: i64(0), RunAsNonRoot: &no},
			[]string{"/bin/app"}, ""},
		{"runAsNonRoot without a uid is refused", &corev1.PodSecurityContext{RunAsNonRoot: &yes}, nil, nil, "runAsNonRoot"},
		{"runAsNonRoot with uid 0 is refused", nil, &corev1.SecurityContext{RunAsUser: i64(0), RunAsNonRoot: &yes}, nil, "runAsNonRoot"},
		{"negative uid is refused", nil, &corev1.SecurityContext{RunAsUser: i64(-1)}, nil, "runAsUser -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := &corev1.Pod{Spec: corev1.PodSpec{SecurityContext: tt.pod}}
			u, err := containerUser(pod, corev1.Container{Name: "app", SecurityContext: tt.c}, nil)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), "container app") {
					t.Fatalf("err = %v, want one naming container app and %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := u.wrap([]string{"/bin/app"}); !slices.Equal(got, tt.want) {
				t.Fatalf("wrap = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestIsSidecar(t *testing.T) {
	always, never := corev1.ContainerRestartPolicyAlways, corev1.ContainerRestartPolicy("Never")
	for _, tt := range []struct {
		policy *corev1.ContainerRestartPolicy
		want   bool
	}{{nil, false}, {&always, true}, {&never, false}} {
		if got := isSidecar(corev1.Container{RestartPolicy: tt.policy}); got != tt.want {
			t.Errorf("restartPolicy %v: isSidecar = %v, want %v", tt.policy, got, tt.want)
		}
	}
}
