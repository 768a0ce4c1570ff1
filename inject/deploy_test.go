package inject

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// deployDir is the injector's kustomize base.
var deployDir = filepath.Join("..", "deploy", "inject")

func readObjects(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(deployDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s: %v", deployDir, err)
	}
	var out []*unstructured.Unstructured
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
		for {
			var u unstructured.Unstructured
			if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if len(u.Object) > 0 {
				out = append(out, &u)
			}
		}
	}
	return out
}

// TestDeployManifests: the API server accepts every object of
// deploy/inject, and its webhook registration is the one
// WebhookConfiguration builds (the one the webhook test exercised).
func TestDeployManifests(t *testing.T) {
	needAPI(t)
	ctx := context.Background()
	c, err := client.New(api.Config, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ballast-system"}}
	if err := c.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	webhooks := 0
	for _, obj := range readObjects(t) {
		if obj.GetKind() == "MutatingWebhookConfiguration" {
			webhooks++
			// As written in the file, before the API server defaults it.
			var got admissionregistrationv1.MutatingWebhookConfiguration
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj.Object, &got); err != nil {
				t.Fatal(err)
			}
			want := WebhookConfiguration(got.Name, got.Webhooks[0].ClientConfig)
			if !reflect.DeepEqual(got.Webhooks, want.Webhooks) {
				t.Errorf("deploy/inject webhook differs from WebhookConfiguration:\n got %+v\nwant %+v", got.Webhooks, want.Webhooks)
			}
		}
		if err := c.Create(ctx, obj, client.DryRunAll); err != nil {
			t.Errorf("%s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
	}
	if webhooks != 1 {
		t.Errorf("deploy/inject has %d webhook configurations, want 1", webhooks)
	}
}
