package files

import (
	"errors"
	"strings"
	"testing"
)

// FuzzDecodeFile decodes arbitrary files: any input either decodes to
// objects that pass every check Ballast relies on, or fails with errors
// that each name the file and a line. Seeds are in testdata/fuzz.
func FuzzDecodeFile(f *testing.F) {
	f.Add([]byte("apiVersion: v1\nkind: Service\nmetadata: {name: greeter, namespace: demo}\nspec:\n  ports: [{name: grpc, port: 80, targetPort: 50051}]\n"))
	f.Add([]byte("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a, labels: {kubernetes.io/service-name: greeter}}\naddressType: IPv4\nports: [{name: grpc, port: 50051}]\nendpoints: [{addresses: [10.0.0.1]}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := decodeFile("fuzz.yaml", data)
		if err != nil {
			for _, e := range flatten(err) {
				var fe *Error
				if !errors.As(e, &fe) || fe.File != "fuzz.yaml" || fe.Line < 1 || fe.Doc < 1 {
					t.Fatalf("error %q does not locate itself in the file", e)
				}
			}
			return
		}
		for _, svc := range objs.services {
			if svc.Name == "" || svc.Namespace == "" {
				t.Fatalf("Service %q/%q decoded without a name or namespace", svc.Namespace, svc.Name)
			}
			for _, p := range svc.Spec.Ports {
				if p.Port < 1 || p.Port > 65535 {
					t.Fatalf("Service port %d decoded", p.Port)
				}
			}
		}
		for _, es := range objs.slices {
			if es.Name == "" || es.Namespace == "" || es.Labels["kubernetes.io/service-name"] == "" {
				t.Fatalf("EndpointSlice %q/%q decoded without a name, namespace or Service", es.Namespace, es.Name)
			}
			if !strings.Contains("IPv4 IPv6 FQDN", string(es.AddressType)) || es.AddressType == "" {
				t.Fatalf("EndpointSlice addressType %q decoded", es.AddressType)
			}
		}
	})
}

// flatten returns the errors errors.Join joined, or err alone.
func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
