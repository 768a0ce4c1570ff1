package files

import (
	"bytes"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// Pod is one serving pod of a Service, as an EndpointSlice lists it.
type Pod struct {
	Name string
	Addr netip.AddrPort // the address and target port it serves on
	Zone string         // empty for none
}

// Manifest is the YAML a Source reads for service: the Service itself and
// the EndpointSlices the endpoint slice controller would write for its
// pods, all ready. Those listen on portName's target port; a slice's ports
// apply to all of its endpoints, so pods on different port numbers get a
// slice each, named <service>-<port>.
func Manifest(service *corev1.Service, portName string, pods []Pod) ([]byte, error) {
	if service.APIVersion == "" {
		service = service.DeepCopy()
		service.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Service"}
	}
	objects := []any{service}
	byPort := map[uint16][]Pod{}
	for _, p := range pods {
		byPort[p.Addr.Port()] = append(byPort[p.Addr.Port()], p)
	}
	for _, port := range slices.Sorted(maps.Keys(byPort)) {
		objects = append(objects, endpointSlice(service, portName, port, byPort[port]))
	}
	var out bytes.Buffer
	for _, obj := range objects {
		doc, err := yaml.Marshal(obj)
		if err != nil {
			return nil, fmt.Errorf("manifest of Service %s/%s: %w", service.Namespace, service.Name, err)
		}
		out.WriteString("---\n")
		out.Write(doc)
	}
	return out.Bytes(), nil
}

func endpointSlice(service *corev1.Service, portName string, port uint16, pods []Pod) *discoveryv1.EndpointSlice {
	yes, no := true, false
	slice := &discoveryv1.EndpointSlice{
		TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
		ObjectMeta: metav1.ObjectMeta{
			Name:      fmt.Sprintf("%s-%d", service.Name, port),
			Namespace: service.Namespace,
			Labels:    map[string]string{discoveryv1.LabelServiceName: service.Name},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{{
			Name:     &portName,
			Port:     ptrTo(int32(port)),
			Protocol: ptrTo(corev1.ProtocolTCP),
		}},
	}
	for _, p := range pods {
		ep := discoveryv1.Endpoint{
			Addresses:  []string{p.Addr.Addr().String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &yes, Serving: &yes, Terminating: &no},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: service.Namespace, Name: p.Name},
		}
		if p.Zone != "" {
			ep.Zone = ptrTo(p.Zone)
		}
		slice.Endpoints = append(slice.Endpoints, ep)
	}
	return slice
}

func ptrTo[T any](v T) *T { return &v }
