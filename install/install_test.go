package install

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"

	"github.com/ballast-dev/ballast/internal/testapi"
)

var api *testapi.Env

func TestMain(m *testing.M) {
	testapi.Main(m, "install", &api)
}

// oldGRPCRoute is a GRPCRoute CRD as Gateway API v1.0 had it: v1alpha2 only.
var oldGRPCRoute = &unstructured.Unstructured{Object: map[string]any{
	"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
	"metadata": map[string]any{"name": "grpcroutes.gateway.networking.k8s.io",
		"annotations": map[string]any{"gateway.networking.k8s.io/bundle-version": "v1.0.0",
			"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/1538"}},
	"spec": map[string]any{
		"group": "gateway.networking.k8s.io", "scope": "Namespaced",
		"names": map[string]any{"kind": "GRPCRoute", "plural": "grpcroutes", "singular": "grpcroute", "listKind": "GRPCRouteList"},
		"versions": []any{map[string]any{"name": "v1alpha2", "served": true, "storage": true,
			"schema": map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}},
	},
}}

// TestInstall on a real kube-apiserver (no controllers, so nothing rolls
// out): preflight refuses a GRPCRoute CRD without v1, naming it; then every
// object is applied, the wait names the Deployment that does not roll out,
// and a second run (an upgrade) keeps the webhook's certificate.
func TestInstall(t *testing.T) {
	ctx := context.Background()
	dyn := dynamic.NewForConfigOrDie(api.Config)
	crds := dyn.Resource(schemaCRD)

	t.Run("preflight refuses an old GRPCRoute CRD", func(t *testing.T) {
		if _, err := crds.Create(ctx, oldGRPCRoute, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		err := Install(ctx, Options{Config: api.Config, Timeout: time.Second})
		if err == nil || !strings.Contains(err.Error(), "grpcroutes.gateway.networking.k8s.io is installed (bundle-version \"v1.0.0\") without version v1") {
			t.Fatalf("err = %v", err)
		}
		if err := crds.Delete(ctx, oldGRPCRoute.GetName(), metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			_, err := crds.Get(ctx, oldGRPCRoute.GetName(), metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		}); err != nil {
			t.Fatal("old CRD not deleted")
		}
	})

	caBundle := func() string {
		w, err := api.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "ballast-inject", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s, err := api.Client.CoreV1().Secrets("ballast-system").Get(ctx, "ballast-inject-tls", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(w.Webhooks[0].ClientConfig.CABundle, s.Data["ca.crt"]) || len(s.Data["ca.crt"]) == 0 {
			t.Fatal("the registration does not trust the Secret's CA")
		}
		return string(s.Data["ca.crt"])
	}

	var first string
	for run := range 2 {
		var progress bytes.Buffer
		err := Install(ctx, Options{Config: api.Config, Timeout: 2 * time.Second, Progress: &progress})
		if err == nil || !strings.Contains(err.Error(), "deployment ballast-system/ballast-control not rolled out") {
			t.Fatalf("run %d: err = %v, want the control plane's rollout named", run, err)
		}
		for _, line := range []string{
			"preflight: Kubernetes ",
			"applied Namespace ballast-system",
			"applied MutatingWebhookConfiguration ballast-inject",
			"applied Deployment ballast-system/ballast-inject",
			"applied PodDisruptionBudget ballast-system/ballast-control",
			"deployment ballast-system/ballast-control: 0/2 updated, 0/2 available",
		} {
			if !strings.Contains(progress.String(), line) {
				t.Errorf("run %d: progress lacks %q:\n%s", run, line, progress.String())
			}
		}
		switch ca := caBundle(); run {
		case 0:
			first = ca
			if !strings.Contains(progress.String(), "CRD grpcroutes.gateway.networking.k8s.io: created") {
				t.Errorf("the CRD was not created:\n%s", progress.String())
			}
		case 1:
			if ca != first {
				t.Error("a second install made a new webhook CA")
			}
			if !strings.Contains(progress.String(), "CRD grpcroutes.gateway.networking.k8s.io: kept the installed one") {
				t.Errorf("the CRD was not kept:\n%s", progress.String())
			}
		}
	}
}
