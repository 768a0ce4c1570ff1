package kube

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestTrimKeepsWhatDiscoveryReads(t *testing.T) {
	meta := func() metav1.ObjectMeta {
		return metav1.ObjectMeta{
			Name:          "greeter",
			Labels:        map[string]string{discoveryv1.LabelServiceName: "greeter"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
			Annotations: map[string]string{
				corev1.LastAppliedConfigAnnotation: `{"a":"big copy"}`,
				"ballast.dev/lb-policy":            "peak_ewma",
			},
		}
	}
	tests := []struct {
		name string
		obj  metav1.Object
	}{
		{"service", &corev1.Service{ObjectMeta: meta()}},
		{"endpointslice", &discoveryv1.EndpointSlice{ObjectMeta: meta()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := trim(tt.obj)
			if err != nil {
				t.Fatal(err)
			}
			m := out.(metav1.Object)
			if len(m.GetManagedFields()) != 0 {
				t.Error("managedFields kept")
			}
			if _, ok := m.GetAnnotations()[corev1.LastAppliedConfigAnnotation]; ok {
				t.Error("last-applied-configuration kept")
			}
			if m.GetAnnotations()["ballast.dev/lb-policy"] != "peak_ewma" || m.GetLabels()[discoveryv1.LabelServiceName] != "greeter" {
				t.Errorf("dropped what discovery reads: labels %v annotations %v", m.GetLabels(), m.GetAnnotations())
			}
		})
	}
}
