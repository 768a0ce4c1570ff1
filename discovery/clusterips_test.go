package discovery

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

func sp(ns, name string, port int32) ServicePort {
	return ServicePort{Key: Key{Namespace: ns, Name: name}, Port: port}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestClusterIPs(t *testing.T) {
	svc := func(ns, name string, ips []string, ports ...Port) *Service {
		s := &Service{Key: Key{Namespace: ns, Name: name}, Ports: ports}
		for _, ip := range ips {
			s.ClusterIPs = append(s.ClusterIPs, netip.MustParseAddr(ip))
		}
		return s
	}
	tests := []struct {
		name     string
		services []*Service
		want     map[string]ServicePort
	}{
		{
			name:     "one port",
			services: []*Service{svc("default", "greeter", []string{"10.96.0.10"}, Port{Port: 50051, Protocol: "TCP"})},
			want:     map[string]ServicePort{"10.96.0.10:50051": sp("default", "greeter", 50051)},
		},
		{
			name: "dual stack, two ports, UDP skipped",
			services: []*Service{svc("ns", "multi", []string{"10.96.0.11", "fd00::11"},
				Port{Name: "grpc", Port: 50051, Protocol: "TCP"},
				Port{Name: "dns", Port: 53, Protocol: "UDP"},
				Port{Name: "admin", Port: 8080})},
			want: map[string]ServicePort{
				"10.96.0.11:50051": sp("ns", "multi", 50051),
				"10.96.0.11:8080":  sp("ns", "multi", 8080),
				"[fd00::11]:50051": sp("ns", "multi", 50051),
				"[fd00::11]:8080":  sp("ns", "multi", 8080),
			},
		},
		{
			name:     "headless",
			services: []*Service{svc("default", "headless", nil, Port{Port: 50051})},
			want:     map[string]ServicePort{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := ClusterIPs(tc.services)
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for dst, target := range tc.want {
				if got[netip.MustParseAddrPort(dst)] != target {
					t.Errorf("%s → %q, want %q", dst, got[netip.MustParseAddrPort(dst)], target)
				}
			}
		})
	}
}

// TestClusterIPIndexFollowsRegistry: a Service added to the registry becomes
// a known destination, and stops being one when deleted.
func TestClusterIPIndexFollowsRegistry(t *testing.T) {
	reg := NewRegistry()
	x := NewClusterIPIndex(reg)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- x.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	dst := netip.MustParseAddrPort("10.96.0.10:50051")
	key := Key{Namespace: "default", Name: "greeter"}
	reg.Set(&Service{Key: key, ClusterIPs: []netip.Addr{dst.Addr()}, Ports: []Port{{Port: 50051}}})
	eventually(t, "index learns the Service", func() bool {
		got, ok := x.Lookup(dst)
		return ok && got == sp("default", "greeter", 50051)
	})
	// A v4-mapped destination (from an IPv6 socket) is the same address.
	if _, ok := x.Lookup(netip.AddrPortFrom(netip.AddrFrom16(dst.Addr().As16()), 50051)); !ok {
		t.Error("v4-mapped destination not found")
	}
	reg.Delete(key)
	eventually(t, "index forgets the Service", func() bool { _, ok := x.Lookup(dst); return !ok })
}
