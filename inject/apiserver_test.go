package inject

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/internal/testapi"
)

// api is the API server of the tests that need one; fuzzing runs (whose
// workers each run TestMain) start none.
var api *testapi.Env

func TestMain(m *testing.M) {
	flag.Parse()
	if flag.Lookup("test.fuzz").Value.String() != "" || flag.Lookup("test.fuzzworker").Value.String() == "true" {
		os.Exit(m.Run())
	}
	testapi.Main(m, "inject", &api)
}

func needAPI(t *testing.T) {
	if api == nil {
		t.Skip("no API server while fuzzing")
	}
}

// TestWebhookWithAPIServer registers the injector with a real
// kube-apiserver, which calls it over TLS for every pod created: labelled
// namespaces get the sidecar (and the API server accepts the result),
// unlabelled ones and opted-out pods do not, and with the injector down
// pods are still created.
func TestWebhookWithAPIServer(t *testing.T) {
	needAPI(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	client := api.Client
	cert, caBundle, err := SelfSigned([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(Handler(Config{Image: "ballast:test"}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	url := srv.URL + "/inject"

	for name, labels := range map[string]map[string]string{
		"inject-on":  {NamespaceLabel: NamespaceEnabled},
		"inject-off": nil,
	} {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
		if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Registered without a CA, as deploy/inject does; the injector
	// publishes its own.
	cfg := WebhookConfiguration("ballast-inject-test", admissionregistrationv1.WebhookClientConfig{URL: &url})
	if _, err := client.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, cfg, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		client.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(context.Background(), cfg.Name, metav1.DeleteOptions{})
	})
	if err := PatchCABundle(ctx, client, cfg.Name, caBundle); err != nil {
		t.Fatal(err)
	}

	n := 0
	create := func(t *testing.T, ns string, annotations map[string]string, dryRun bool) *corev1.Pod {
		t.Helper()
		n++
		pod := testPod(annotations)
		pod.Name, pod.Namespace = fmt.Sprintf("client-%d", n), ns
		opts := metav1.CreateOptions{}
		if dryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		created, err := client.CoreV1().Pods(ns).Create(ctx, pod, opts)
		if err != nil {
			t.Fatalf("create pod in %s: %v", ns, err)
		}
		return created
	}
	isInjected := func(p *corev1.Pod) bool {
		return len(p.Spec.InitContainers) == 3 && p.Spec.InitContainers[1].Name == ProxyContainerName
	}
	// The API server picks up a new webhook configuration asynchronously.
	deadline := time.Now().Add(30 * time.Second)
	for !isInjected(create(t, "inject-on", nil, true)) {
		if time.Now().After(deadline) {
			t.Fatal("the API server never called the webhook")
		}
		time.Sleep(50 * time.Millisecond)
	}

	tests := []struct {
		name        string
		ns          string
		annotations map[string]string
		want        bool
	}{
		{"labelled namespace", "inject-on", nil, true},
		{"opted out", "inject-on", map[string]string{OptOutAnnotation: "false"}, false},
		{"unlabelled namespace", "inject-off", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := create(t, tc.ns, tc.annotations, false)
			if got := isInjected(pod); got != tc.want {
				t.Fatalf("injected = %v, want %v; init containers %d", got, tc.want, len(pod.Spec.InitContainers))
			}
			if tc.want && pod.Annotations[InjectedAnnotation] != "true" {
				t.Error("injected pod lacks the injected annotation")
			}
		})
	}
	t.Run("webhook down: pods are still created", func(t *testing.T) {
		srv.Close()
		if isInjected(create(t, "inject-on", nil, false)) {
			t.Fatal("pod injected by a closed webhook")
		}
	})
}
