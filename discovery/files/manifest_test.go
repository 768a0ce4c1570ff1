package files_test

import (
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/files"
)

// A manifest reads back through the file source as the Service it
// describes: every pod ready on its own target port, in its zone.
func TestManifestReadsBack(t *testing.T) {
	service := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "greeter", Namespace: "demo"},
		Spec: corev1.ServiceSpec{
			ClusterIP: "10.96.0.10",
			Ports:     []corev1.ServicePort{{Name: "grpc", Port: 50051, TargetPort: intstr.FromString("grpc")}},
		},
	}
	pods := []files.Pod{
		{Name: "greeter-a", Addr: netip.MustParseAddrPort("10.0.0.1:50051"), Zone: "zone-a"},
		{Name: "greeter-b", Addr: netip.MustParseAddrPort("10.0.0.2:50052")},
		{Name: "greeter-c", Addr: netip.MustParseAddrPort("10.0.0.3:50051"), Zone: "zone-b"},
	}
	yaml, err := files.Manifest(service, "grpc", pods)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "greeter.yaml"), yaml, 0o644); err != nil {
		t.Fatal(err)
	}
	reg := discovery.NewRegistry()
	if err := files.New(dir, reg, files.Options{Logger: slog.New(slog.DiscardHandler)}).Load(); err != nil {
		t.Fatalf("Load: %v\n%s", err, yaml)
	}
	got, ok := reg.Get(discovery.Key{Namespace: "demo", Name: "greeter"})
	if !ok {
		t.Fatalf("no Service demo/greeter from\n%s", yaml)
	}
	endpoint := func(addr, pod, zone string) discovery.Endpoint {
		return discovery.Endpoint{Address: netip.MustParseAddrPort(addr), Ready: true, Serving: true, Pod: pod, Zone: zone}
	}
	want := &discovery.Service{
		Key:        discovery.Key{Namespace: "demo", Name: "greeter"},
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports: []discovery.Port{{Name: "grpc", Port: 50051, Protocol: "TCP", Endpoints: []discovery.Endpoint{
			endpoint("10.0.0.1:50051", "greeter-a", "zone-a"),
			endpoint("10.0.0.2:50052", "greeter-b", ""),
			endpoint("10.0.0.3:50051", "greeter-c", "zone-b"),
		}}},
	}
	if diff := cmp.Diff(want, got, cmpopts.EquateComparable(netip.Addr{}, netip.AddrPort{})); diff != "" {
		t.Errorf("Service read back (-want +got):\n%s\nfrom:\n%s", diff, yaml)
	}
}
