package discovery

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// addrComparers let cmp compare netip values, whose fields are unexported.
var addrComparers = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }),
}

func ptr[T any](v T) *T { return &v }

func service(ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "greeter"},
		Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"}, Ports: ports},
	}
}

func grpcPort(name string, port int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: port, Protocol: corev1.ProtocolTCP}
}

func slicePortOf(name string, port int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr(name), Port: ptr(port), Protocol: ptr(corev1.ProtocolTCP)}
}

// endpointSlice makes a slice of the greeter Service.
func endpointSlice(name string, at discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "default", Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: "greeter"},
		},
		AddressType: at,
		Ports:       ports,
		Endpoints:   eps,
	}
}

type conds struct{ ready, serving, terminating *bool }

func endpoint(addr string, c conds) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses:  []string{addr},
		Conditions: discoveryv1.EndpointConditions{Ready: c.ready, Serving: c.serving, Terminating: c.terminating},
	}
}

var (
	readyConds    = conds{ready: ptr(true), serving: ptr(true), terminating: ptr(false)}
	notReadyConds = conds{ready: ptr(false), serving: ptr(false), terminating: ptr(false)}
	drainingConds = conds{ready: ptr(false), serving: ptr(true), terminating: ptr(true)}
	goneConds     = conds{ready: ptr(false), serving: ptr(false), terminating: ptr(true)}
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func ready(addr string) Endpoint {
	return Endpoint{Address: ap(addr), Ready: true, Serving: true}
}

func TestBuild(t *testing.T) {
	grpc := []discoveryv1.EndpointPort{slicePortOf("grpc", 50051)}
	key := Key{Namespace: "default", Name: "greeter"}
	clusterIP := []netip.Addr{netip.MustParseAddr("10.96.0.10")}
	tests := []struct {
		name   string
		svc    *corev1.Service
		slices []*discoveryv1.EndpointSlice
		want   *Service
	}{
		{
			name: "no slices gives ports without endpoints",
			svc:  service(grpcPort("grpc", 50051)),
			want: &Service{Key: key, ClusterIPs: clusterIP, Ports: []Port{{Name: "grpc", Port: 50051, Protocol: "TCP"}}},
		},
		{
			name: "two slices merge, sorted by address",
			svc:  service(grpcPort("grpc", 50051)),
			slices: []*discoveryv1.EndpointSlice{
				endpointSlice("greeter-b", discoveryv1.AddressTypeIPv4, grpc, endpoint("10.244.0.3", readyConds), endpoint("10.244.0.1", readyConds)),
				endpointSlice("greeter-a", discoveryv1.AddressTypeIPv4, grpc, endpoint("10.244.0.2", readyConds)),
			},
			want: &Service{Key: key, ClusterIPs: clusterIP, Ports: []Port{{Name: "grpc", Port: 50051, Protocol: "TCP", Endpoints: []Endpoint{
				ready("10.244.0.1:50051"), ready("10.244.0.2:50051"), ready("10.244.0.3:50051"),
			}}}},
		},
		{
			name: "named target port resolves per slice",
			svc:  service(corev1.ServicePort{Name: "grpc", Port: 80, Protocol: corev1.ProtocolTCP}),
			slices: []*discoveryv1.EndpointSlice{
				endpointSlice("greeter-a", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{slicePortOf("grpc", 50051)}, endpoint("10.244.0.1", readyConds)),
				endpointSlice("greeter-b", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{slicePortOf("grpc", 9000)}, endpoint("10.244.0.2", readyConds)),
			},
			want: &Service{Key: key, ClusterIPs: clusterIP, Ports: []Port{{Name: "grpc", Port: 80, Protocol: "TCP", Endpoints: []Endpoint{
				ready("10.244.0.1:50051"), ready("10.244.0.2:9000"),
			}}}},
		},
		{
			name: "slice port of another name or protocol is not used",
			svc:  service(grpcPort("grpc", 50051)),
			slices: []*discoveryv1.EndpointSlice{
				endpointSlice("greeter-a", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{slicePortOf("metrics", 9090)}, endpoint("10.244.0.1", readyConds)),
				endpointSlice("greeter-b", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{{Name: ptr("grpc"), Port: ptr(int32(50051)), Protocol: ptr(corev1.ProtocolUDP)}}, endpoint("10.244.0.2", readyConds)),
			},
			want: &Service{Key: key, ClusterIPs: clusterIP, Ports: []Port{{Name: "grpc", Port: 50051, Protocol: "TCP"}}},
		},
		{
			name: "nil conditions read as ready, serving, not terminating",
			svc:  service(grpcPort("grpc", 50051)),
			slices: []*discoveryv1.EndpointSlice{
				endpointSlice("greeter-a", discoveryv1.AddressTypeIPv4, grpc, endpoint("10.244.0.1", conds{})),
			},
			want: &Service{Key: key, ClusterIPs: clusterIP, Ports: []Port{{Name: "grpc", Port: 50051, Protocol: "TCP", Endpoints: []Endpoint{
				ready("10.244.0.1:50051"),
			}}}},
		},
		{
			name: "nil serving is true even when not ready",
			svc:  service(grpcPort("grpc", 50051)),
			slices: []*discoveryv1.EndpointSlice{
				endpointSlice("greeter-a", discoveryv1.AddressTypeIPv4, grpc, endpoint("10.244.0.1", conds{ready: ptr(false), terminating: ptr(true)})),
			},
			want: &Service{Key: key, ClusterIPs: clusterIP, Ports: []Port{{Name: "grpc", Port: 50051, Protocol: "TCP", Endpoints: []Endpoint{
				{Address: ap("10.244.0.1:50051"), Serving: true, Terminating: true},
			}}}},
		},
		{
			name: "terminating endpoints are kept with their conditions",
			svc:  service(grpcPort("grpc", 50051)),
			slices: []*discoveryv1.EndpointSlice{
				endpointSlice("greeter-a", discoveryv1.AddressTypeIPv4, grpc,
					endpoint("10.244.0.1", drainingConds), endpoint("10.244.0.2", goneConds), endpoint("10.244.0.3", notReadyConds)),
			},
			want: &Service{Key: key, ClusterIPs: clusterIP, Ports: []Port{{Name: "grpc", Port: 50051, Protocol: "TCP", Endpoints: []Endpoint{
				{Address: ap("10.244.0.1:50051"), Serving: true, Terminating: true},
				{Address: ap("10.244.0.2:50051"), Terminating: true},
				{Address: ap("10.244.0.3:50051")},
			}}}},
		},
		{
			name: "an address in two slices appears once, with the better conditions",
			svc:  service(grpcPort("grpc", 50051)),
			slices: []*discoveryv1.EndpointSlice{
				endpointSlice("greeter-a", discoveryv1.AddressTypeIPv4, grpc, endpoint("10.244.0.1", notReadyConds), endpoint("10.244.0.2", notReadyConds)),
				endpointSlice("greeter-b", discoveryv1.AddressTypeIPv4, grpc, endpoint("10.244.0.1", readyConds), endpoint("10.244.0.2", drainingConds)),
				endpointSlice("greeter-c", discoveryv1.AddressTypeIPv4, grpc, endpoint("10.244.0.1", notReadyConds), endpoint("10.244.0.2", goneConds)),
			},
			want: &Service{Key: key, ClusterIPs: clusterIP, Ports: []Port{{Name: "grpc", Port: 50051, Protocol: "TCP", Endpoints: []Endpoint{
				ready("10.244.0.1:50051"),
				{Address: ap("10.244.0.2:50051"), Serving: true, Terminating: true},
			}}}},
		},
		{
			name: "FQDN slices, bad addresses and other services' slices are ignored",
			svc:  service(grpcPort("grpc", 50051)),
			slices: []*discoveryv1.EndpointSlice{
				endpointSlice("greeter-fqdn", discoveryv1.AddressTypeFQDN, grpc, endpoint("pod.example.test", readyConds)),
				endpointSlice("greeter-bad", discoveryv1.AddressTypeIPv4, grpc, endpoint("10.244.0.300", readyConds)),
				func() *discoveryv1.EndpointSlice {
					s := endpointSlice("other-a", discoveryv1.AddressTypeIPv4, grpc, endpoint("10.244.1.1", readyConds))
					s.Labels[discoveryv1.LabelServiceName] = "other"
					return s
				}(),
				func() *discoveryv1.EndpointSlice {
					s := endpointSlice("greeter-elsewhere", discoveryv1.AddressTypeIPv4, grpc, endpoint("10.244.1.2", readyConds))
					s.Namespace = "elsewhere"
					return s
				}(),
			},
			want: &Service{Key: key, ClusterIPs: clusterIP, Ports: []Port{{Name: "grpc", Port: 50051, Protocol: "TCP"}}},
		},
		{
			name: "IPv6 and dual-stack",
			svc: func() *corev1.Service {
				s := service(grpcPort("grpc", 50051))
				s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:96::10"}
				return s
			}(),
			slices: []*discoveryv1.EndpointSlice{
				endpointSlice("greeter-v6", discoveryv1.AddressTypeIPv6, grpc, endpoint("fd00:244::2", readyConds), endpoint("fd00:244::1", drainingConds)),
				endpointSlice("greeter-v4", discoveryv1.AddressTypeIPv4, grpc, endpoint("10.244.0.1", readyConds)),
			},
			want: &Service{Key: key, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00:96::10")}, Ports: []Port{{Name: "grpc", Port: 50051, Protocol: "TCP", Endpoints: []Endpoint{
				ready("10.244.0.1:50051"),
				{Address: ap("[fd00:244::1]:50051"), Serving: true, Terminating: true},
				ready("[fd00:244::2]:50051"),
			}}}},
		},
		{
			name: "headless service has no cluster IPs",
			svc: func() *corev1.Service {
				s := service(grpcPort("", 50051))
				s.Spec.ClusterIP, s.Spec.ClusterIPs = corev1.ClusterIPNone, []string{corev1.ClusterIPNone}
				return s
			}(),
			want: &Service{Key: key, Ports: []Port{{Port: 50051, Protocol: "TCP"}}},
		},
		{
			name: "ports sorted by number, then protocol; protocol defaults to TCP",
			svc: service(
				corev1.ServicePort{Name: "dns-udp", Port: 53, Protocol: corev1.ProtocolUDP},
				corev1.ServicePort{Name: "metrics", Port: 9090},
				corev1.ServicePort{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP},
			),
			slices: []*discoveryv1.EndpointSlice{
				endpointSlice("greeter-a", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{
					{Name: ptr("dns-udp"), Port: ptr(int32(5353)), Protocol: ptr(corev1.ProtocolUDP)},
					{Name: ptr("dns-tcp"), Port: ptr(int32(5353)), Protocol: ptr(corev1.ProtocolTCP)},
					{Name: ptr("metrics"), Port: ptr(int32(9090))},
				}, endpoint("10.244.0.1", readyConds)),
			},
			want: &Service{Key: key, ClusterIPs: clusterIP, Ports: []Port{
				{Name: "dns-tcp", Port: 53, Protocol: "TCP", Endpoints: []Endpoint{ready("10.244.0.1:5353")}},
				{Name: "dns-udp", Port: 53, Protocol: "UDP", Endpoints: []Endpoint{ready("10.244.0.1:5353")}},
				{Name: "metrics", Port: 9090, Protocol: "TCP", Endpoints: []Endpoint{ready("10.244.0.1:9090")}},
			}},
		},
		{
			name: "trafficDistribution is carried",
			svc: func() *corev1.Service {
				s := service(grpcPort("grpc", 50051))
				s.Spec.TrafficDistribution = ptr(corev1.ServiceTrafficDistributionPreferClose)
				return s
			}(),
			want: &Service{Key: key, ClusterIPs: clusterIP, Ports: []Port{{Name: "grpc", Port: 50051, Protocol: "TCP"}}, TrafficDistribution: "PreferClose"},
		},
		{
			name: "zone, node and pod are carried",
			svc:  service(grpcPort("grpc", 50051)),
			slices: []*discoveryv1.EndpointSlice{
				endpointSlice("greeter-a", discoveryv1.AddressTypeIPv4, grpc, discoveryv1.Endpoint{
					Addresses: []string{"10.244.0.1"},
					Zone:      ptr("zone-a"), NodeName: ptr("node-1"),
					TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "greeter-7d9f"},
				}),
			},
			want: &Service{Key: key, ClusterIPs: clusterIP, Ports: []Port{{Name: "grpc", Port: 50051, Protocol: "TCP", Endpoints: []Endpoint{
				{Address: ap("10.244.0.1:50051"), Ready: true, Serving: true, Zone: "zone-a", Node: "node-1", Pod: "greeter-7d9f"},
			}}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Build(tt.svc, tt.slices)
			if diff := cmp.Diff(tt.want, got, addrComparers); diff != "" {
				t.Errorf("Build() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEndpointDraining(t *testing.T) {
	tests := []struct {
		name string
		c    conds
		want bool
	}{
		{"ready", readyConds, false},
		{"not ready", notReadyConds, false},
		{"terminating and serving", drainingConds, true},
		{"terminating, not serving", goneConds, false},
		{"terminating, serving unknown", conds{ready: ptr(false), terminating: ptr(true)}, true},
	}
	grpc := []discoveryv1.EndpointPort{slicePortOf("grpc", 50051)}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Build(service(grpcPort("grpc", 50051)), []*discoveryv1.EndpointSlice{
				endpointSlice("greeter-a", discoveryv1.AddressTypeIPv4, grpc, endpoint("10.244.0.1", tt.c)),
			})
			eps := s.Ports[0].Endpoints
			if len(eps) != 1 {
				t.Fatalf("got %d endpoints, want 1", len(eps))
			}
			if got := eps[0].Draining(); got != tt.want {
				t.Errorf("Draining() = %v, want %v (endpoint %+v)", got, tt.want, eps[0])
			}
		})
	}
}

// BenchmarkBuild measures one recomputation of a 300-endpoint Service
// spread over three slices, the work each EndpointSlice event costs.
func BenchmarkBuild(b *testing.B) {
	grpc := []discoveryv1.EndpointPort{slicePortOf("grpc", 50051)}
	var ess []*discoveryv1.EndpointSlice
	for s := range 3 {
		var eps []discoveryv1.Endpoint
		for i := range 100 {
			eps = append(eps, endpoint(fmt.Sprintf("10.244.%d.%d", s, i+1), readyConds))
		}
		ess = append(ess, endpointSlice(fmt.Sprintf("greeter-%d", s), discoveryv1.AddressTypeIPv4, grpc, eps...))
	}
	svc := service(grpcPort("grpc", 50051))
	b.ReportAllocs()
	for b.Loop() {
		Build(svc, ess)
	}
}
