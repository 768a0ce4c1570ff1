package kube

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// trim keeps exactly what discovery.Build reads and what the informers key
// objects by, and trimming twice changes nothing (client-go's rule for a
// transform).
func TestTrimKeepsWhatDiscoveryReads(t *testing.T) {
	yes, no := true, false
	port, name, tcp := int32(8080), "grpc", corev1.ProtocolTCP
	sameZone := corev1.ServiceTrafficDistributionPreferSameZone
	meta := func(labels map[string]string) metav1.ObjectMeta {
		return metav1.ObjectMeta{
			Name: "greeter", Namespace: "shop", UID: "u1", ResourceVersion: "42", GenerateName: "greeter-",
			Labels:          labels,
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
			OwnerReferences: []metav1.OwnerReference{{Kind: "Service", Name: "greeter"}},
			Annotations: map[string]string{
				corev1.LastAppliedConfigAnnotation: `{"a":"big copy"}`,
				"ballast.dev/lb-policy":            "peak_ewma",
				"other.example/note":               "x",
			},
		}
	}
	kept := func(labels, annotations map[string]string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: "greeter", Namespace: "shop", UID: "u1", ResourceVersion: "42", Labels: labels, Annotations: annotations}
	}
	tests := []struct {
		name     string
		in, want any
	}{
		{
			name: "service",
			in: &corev1.Service{
				ObjectMeta: meta(map[string]string{"app": "greeter"}),
				Spec: corev1.ServiceSpec{
					ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"}, Selector: map[string]string{"app": "greeter"},
					Ports:               []corev1.ServicePort{{Name: name, Protocol: tcp, Port: 50051, TargetPort: intstr.FromString("grpc"), AppProtocol: &name}},
					TrafficDistribution: &sameZone,
				},
				Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: "1.2.3.4"}}}},
			},
			want: &corev1.Service{
				ObjectMeta: kept(nil, map[string]string{"ballast.dev/lb-policy": "peak_ewma"}),
				Spec: corev1.ServiceSpec{
					ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
					Ports:               []corev1.ServicePort{{Name: name, Protocol: tcp, Port: 50051}},
					TrafficDistribution: &sameZone,
				},
			},
		},
		{
			name: "endpointslice",
			in: &discoveryv1.EndpointSlice{
				ObjectMeta:  meta(map[string]string{discoveryv1.LabelServiceName: "greeter", "endpointslice.kubernetes.io/managed-by": "x"}),
				AddressType: discoveryv1.AddressTypeIPv4,
				Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &tcp, Port: &port}},
				Endpoints: []discoveryv1.Endpoint{{
					Addresses:  []string{"10.244.0.1"},
					Conditions: discoveryv1.EndpointConditions{Ready: &yes, Serving: &yes, Terminating: &no},
					Hostname:   &name, NodeName: &name, Zone: &name,
					TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "greeter-1", Namespace: "shop", UID: "p1", ResourceVersion: "7"},
					Hints:     &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "z"}}},
				}},
			},
			want: &discoveryv1.EndpointSlice{
				ObjectMeta:  kept(map[string]string{discoveryv1.LabelServiceName: "greeter"}, nil),
				AddressType: discoveryv1.AddressTypeIPv4,
				Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &tcp, Port: &port}},
				Endpoints: []discoveryv1.Endpoint{{
					Addresses:  []string{"10.244.0.1"},
					Conditions: discoveryv1.EndpointConditions{Ready: &yes, Serving: &yes, Terminating: &no},
					NodeName:   &name, Zone: &name,
					TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "greeter-1"},
				}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			once, err := trim(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, once); d != "" {
				t.Errorf("trim (-want +got):\n%s", d)
			}
			// trim works in place: trim a copy of its output again.
			twice, err := trim(once.(runtime.Object).DeepCopyObject())
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, twice); d != "" {
				t.Errorf("trim is not idempotent (-once +twice):\n%s", d)
			}
		})
	}
}
