package devcluster

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
)

func TestEnvResolve(t *testing.T) {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "cfg"}, Data: map[string]string{"level": "debug", "b": "2"}}
	factory := informers.NewSharedInformerFactory(fake.NewClientset(), 0)
	factory.Core().V1().ConfigMaps().Informer().GetStore().Add(cm)
	r := envResolver{configMaps: factory.Core().V1().ConfigMaps().Lister(), secrets: factory.Core().V1().Secrets().Lister()}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-1", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: "node-zone-a"}}
	field := func(p string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: p}}
	}
	tests := []struct {
		name string
		c    corev1.Container
		want []string
		err  bool
	}{{
		name: "downward API including the pod IP",
		c: corev1.Container{Name: "c", Env: []corev1.EnvVar{
			{Name: "POD_NAME", ValueFrom: field("metadata.name")},
			{Name: "POD_NAMESPACE", ValueFrom: field("metadata.namespace")},
			{Name: "POD_IP", ValueFrom: field("status.podIP")},
			{Name: "NODE", ValueFrom: field("spec.nodeName")},
			{Name: "APP", ValueFrom: field("metadata.labels['app']")},
		}},
		want: []string{"POD_NAME=web-1", "POD_NAMESPACE=ns", "POD_IP=10.64.1.2", "NODE=node-zone-a", "APP=web"},
	}, {
		name: "references to earlier variables expand; unknown ones stay",
		c: corev1.Container{Name: "c", Env: []corev1.EnvVar{
			{Name: "A", Value: "x"},
			{Name: "B", Value: "$(A)-$(NOPE)-$$(A)"},
		}},
		want: []string{"A=x", "B=x-$(NOPE)-$(A)"},
	}, {
		name: "envFrom a ConfigMap with prefix, then a key",
		c: corev1.Container{Name: "c",
			EnvFrom: []corev1.EnvFromSource{{Prefix: "CFG_", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}}},
			Env:     []corev1.EnvVar{{Name: "LEVEL", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}, Key: "level"}}}},
		},
		want: []string{"CFG_b=2", "CFG_level=debug", "LEVEL=debug"},
	}, {
		name: "a missing ConfigMap key is an error naming it",
		c: corev1.Container{Name: "c", Env: []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{
			ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}, Key: "nope"}}}}},
		err: true,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := r.resolve(pod, tt.c, "10.64.1.2")
			if tt.err {
				if err == nil {
					t.Fatalf("want error, got %v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestExpandArgs(t *testing.T) {
	env := []string{"POD_NAME=web-1", "GRPC_XDS_BOOTSTRAP=/run/xds/web-1.json", "EMPTY="}
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"a variable is replaced", []string{"bootstrap", "--out", "$(GRPC_XDS_BOOTSTRAP)"}, []string{"bootstrap", "--out", "/run/xds/web-1.json"}},
		{"inside a word", []string{"--pod=$(POD_NAME)x"}, []string{"--pod=web-1x"}},
		{"unknown stays as written", []string{"$(NOPE)"}, []string{"$(NOPE)"}},
		{"$$ escapes", []string{"$$(POD_NAME)"}, []string{"$(POD_NAME)"}},
		{"shell syntax is left alone", []string{"echo $POD_NAME ${POD_NAME}"}, []string{"echo $POD_NAME ${POD_NAME}"}},
		{"empty value", []string{"[$(EMPTY)]"}, []string{"[]"}},
		{"no args", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := expandArgs(tt.args, env); !slices.Equal(got, tt.want) {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}
