package devcluster

import (
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func testNetwork() *network {
	return &network{
		podCIDR: netip.MustParsePrefix("10.64.0.0/16"),
		svcCIDR: netip.MustParsePrefix("10.128.0.0/16"),
		gateway: netip.MustParseAddr("10.64.0.1"),
	}
}

func service(name, ip string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: corev1.ServiceSpec{ClusterIP: ip, Ports: ports}}
}

type ep struct {
	ip                        string
	ready, serving, terminate bool
}

func slice(svc, port string, num int32, eps ...ep) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: svc + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(port), Port: ptr.To(num)}},
	}
	for _, e := range eps {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{e.ip},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(e.ready), Serving: ptr.To(e.serving), Terminating: ptr.To(e.terminate)}})
	}
	return s
}

func TestNatRules(t *testing.T) {
	grpc := corev1.ServicePort{Name: "grpc", Port: 50051, Protocol: corev1.ProtocolTCP}
	tests := []struct {
		name     string
		services []*corev1.Service
		slices   []*discoveryv1.EndpointSlice
		want     []string // lines that must appear
		notWant  []string // substrings that must not appear
		// reached is how many endpoints the first Service's ClusterIP and
		// first port reach once the rules are applied.
		reached int
	}{{
		name:     "three ready endpoints split 1/3, 1/2, rest",
		services: []*corev1.Service{service("greeter", "10.128.0.10", grpc)},
		slices: []*discoveryv1.EndpointSlice{slice("greeter", "grpc", 50051,
			ep{"10.64.1.3", true, true, false}, ep{"10.64.1.2", true, true, false}, ep{"10.64.2.2", true, true, false})},
		want: []string{
			"-A BLST-SERVICES -d 10.128.0.10/32 -p tcp -m tcp --dport 50051 -j " + chainName("BLST-SVC-", "default", "greeter", "grpc", "tcp"),
			"--probability 0.3333333333 -j " + chainName("BLST-SEP-", "default", "greeter", "grpc", "tcp", "10.64.1.2:50051"),
			"--probability 0.5000000000 -j " + chainName("BLST-SEP-", "default", "greeter", "grpc", "tcp", "10.64.1.3:50051"),
			"-A " + chainName("BLST-SVC-", "default", "greeter", "grpc", "tcp") + " -j " + chainName("BLST-SEP-", "default", "greeter", "grpc", "tcp", "10.64.2.2:50051"),
			"-j DNAT --to-destination 10.64.2.2:50051",
		},
		reached: 3,
	}, {
		name:     "not ready and terminating endpoints are skipped while a ready one exists",
		services: []*corev1.Service{service("greeter", "10.128.0.10", grpc)},
		slices: []*discoveryv1.EndpointSlice{slice("greeter", "grpc", 50051,
			ep{"10.64.1.2", true, true, false}, ep{"10.64.1.3", false, false, false}, ep{"10.64.1.4", false, true, true})},
		want:    []string{"-j DNAT --to-destination 10.64.1.2:50051"},
		notWant: []string{"10.64.1.3", "10.64.1.4", "statistic"},
		reached: 1,
	}, {
		name:     "only serving terminating endpoints: use them",
		services: []*corev1.Service{service("greeter", "10.128.0.10", grpc)},
		slices:   []*discoveryv1.EndpointSlice{slice("greeter", "grpc", 50051, ep{"10.64.1.4", false, true, true})},
		want:     []string{"-j DNAT --to-destination 10.64.1.4:50051"},
		reached:  1,
	}, {
		name:     "addresses outside the pod CIDR are never targets",
		services: []*corev1.Service{service("kubernetes", "10.128.0.1", corev1.ServicePort{Name: "https", Port: 443})},
		slices:   []*discoveryv1.EndpointSlice{slice("kubernetes", "https", 6443, ep{"127.0.0.1", true, true, false})},
		notWant:  []string{"127.0.0.1", "BLST-SVC-"},
	}, {
		name:     "headless and foreign ClusterIPs get no rules",
		services: []*corev1.Service{service("headless", "None", grpc), service("foreign", "192.0.2.7", grpc)},
		slices:   []*discoveryv1.EndpointSlice{slice("headless", "grpc", 50051, ep{"10.64.1.2", true, true, false})},
		notWant:  []string{"DNAT"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := natRules(testNetwork(), tt.services, tt.slices)
			if !strings.HasPrefix(got, "*nat\n") || !strings.HasSuffix(got, "COMMIT\n") {
				t.Fatalf("not a whole nat table:\n%s", got)
			}
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("missing %q in\n%s", w, got)
				}
			}
			for _, nw := range tt.notWant {
				if strings.Contains(got, nw) {
					t.Errorf("unexpected %q in\n%s", nw, got)
				}
			}
			p := &proxy{programmed: got}
			svc := tt.services[0]
			if ip, err := netip.ParseAddr(svc.Spec.ClusterIP); err == nil {
				if n := p.endpointsProgrammed(ip, svc.Spec.Ports[0].Port); n != tt.reached {
					t.Errorf("%s:%d reaches %d endpoints, want %d", ip, svc.Spec.Ports[0].Port, n, tt.reached)
				}
			}
		})
	}
}

func TestNatRulesDeterministic(t *testing.T) {
	grpc := corev1.ServicePort{Name: "grpc", Port: 50051}
	a := []*corev1.Service{service("a", "10.128.0.10", grpc), service("b", "10.128.0.11", grpc)}
	b := []*corev1.Service{a[1], a[0]}
	s := []*discoveryv1.EndpointSlice{slice("a", "grpc", 50051, ep{"10.64.1.3", true, true, false}, ep{"10.64.1.2", true, true, false})}
	if natRules(testNetwork(), a, s) != natRules(testNetwork(), b, s) {
		t.Fatal("rules depend on the order of the informer's list: every resync would rewrite the table")
	}
}

func TestPodFiles(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-1"}}
	files := podFiles(pod, netip.MustParseAddr("10.64.0.1"))
	want := "nameserver 10.64.0.1\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
	if files["resolv.conf"] != want {
		t.Fatalf("resolv.conf = %q, want %q", files["resolv.conf"], want)
	}
}
