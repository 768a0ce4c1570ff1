package greetertest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/discovery/files"
)

// The API server refuses loopback endpoint addresses, so tests whose pods
// are greeters on loopback hand them to discovery as the Service and
// EndpointSlices `--files` reads.

// Serve starts a greeter per name, as Start does, and returns them as the
// pods of an EndpointSlice.
func Serve(t testing.TB, names ...string) []files.Pod {
	t.Helper()
	out := make([]files.Pod, 0, len(names))
	for _, name := range names {
		p := Start(t, name, Options{})
		out = append(out, files.Pod{Name: p.Name, Addr: p.Addr})
	}
	return out
}

// Names are n pod names: prefix-0, prefix-1, …
func Names(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return out
}

// ServiceYAML is Service ns/name, port grpc 50051, with pods as its ready
// endpoints.
func ServiceYAML(t testing.TB, ns, name string, pods []files.Pod) []byte {
	t.Helper()
	y, err := files.Manifest(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "grpc", Port: 50051}}},
	}, "grpc", pods)
	if err != nil {
		t.Fatal(err)
	}
	return y
}

// WriteService writes ServiceYAML to dir/name.yaml.
func WriteService(t testing.TB, dir, ns, name string, pods []files.Pod) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name+".yaml"), ServiceYAML(t, ns, name, pods), 0o600); err != nil {
		t.Fatal(err)
	}
}
