// Package greetertest runs the article's greeter as pods on loopback for
// tests, and writes them as the Service and EndpointSlices `--files`
// reads: the API server refuses loopback endpoint addresses, so tests whose
// pods are local servers hand them to discovery this way.
package greetertest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/discovery/files"
	"github.com/ballast-dev/ballast/greeter"
)

// Pods serves a greeter per name on 127.0.0.1, each replying with its
// name, until the test ends.
func Pods(t testing.TB, names ...string) []files.Pod {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	out := make([]files.Pod, 0, len(names))
	for _, name := range names {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, files.Pod{Name: name, Addr: netip.MustParseAddrPort(lis.Addr().String())})
		g := &greeter.Server{Pod: name, Log: slog.New(slog.DiscardHandler)}
		wg.Go(func() { g.Serve(ctx, lis) })
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
