package kube_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/ballast-dev/ballast/api/v1alpha1"
	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/kube"
)

// TestPolicyStatus runs the Kubernetes source with policies and the status
// writer against a real kube-apiserver with the TrafficPolicy CRD deploy/
// installs: a policy on a Service applies to its calls and is Accepted,
// its message naming what proxyless clients cannot honour; a younger one
// on the same Service is Conflicted; one on a Service that does not exist
// is TargetNotFound; deleting the older hands the Service to the younger.
func TestPolicyStatus(t *testing.T) {
	if _, err := envtest.InstallCRDs(env.Config, envtest.CRDInstallOptions{Paths: []string{"../../deploy/control/crd"}}); err != nil {
		t.Fatalf("install the TrafficPolicy CRD of deploy/: %v", err)
	}
	ns := newNamespace(t)
	ctx := context.Background()
	if _, err := env.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "greeter"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "grpc", Port: 50051}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dc, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	policies := dc.Resource(v1alpha1.GroupVersion.WithResource("trafficpolicies")).Namespace(ns)
	create := func(name, spec string) {
		t.Helper()
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte("spec:\n  "+strings.ReplaceAll(spec, "\n", "\n  ")), &u.Object); err != nil {
			t.Fatal(err)
		}
		u.SetAPIVersion(v1alpha1.GroupVersion.String())
		u.SetKind("TrafficPolicy")
		u.SetName(name)
		// The CRD may not be established yet.
		deadline := time.Now().Add(waitTimeout)
		for {
			_, err := policies.Create(ctx, u, metav1.CreateOptions{})
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("create policy %s: %v", name, err)
			}
			time.Sleep(50 * time.Millisecond) // polling interval, not synchronisation
		}
	}
	create("older", "targetRefs: [{group: '', kind: Service, name: greeter}]\ntimeouts: {request: 200ms, backendRequest: 100ms}")
	// creationTimestamp has a resolution of a second: make the next younger.
	older, err := policies.Get(ctx, "older", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for time.Now().Truncate(time.Second).Equal(older.GetCreationTimestamp().Time.Truncate(time.Second)) {
		time.Sleep(20 * time.Millisecond) // waiting out the clock's second, not synchronisation
	}
	create("younger", "targetRefs: [{group: '', kind: Service, name: greeter}]\ntimeouts: {request: 5s}")
	create("nowhere", "targetRefs: [{group: '', kind: Service, name: missing}]\ntimeouts: {request: 5s}")

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := discovery.NewRegistry()
	src := kube.New(env.Config, reg, kube.Options{Namespace: ns, Logger: log, Policies: true})
	writer := kube.NewStatusWriter(env.Config, reg, kube.StatusOptions{LeaseNamespace: ns, Identity: "test", Synced: src.HasSynced, Logger: log})
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() { src.Run(rctx) })
	wg.Go(func() { writer.Run(rctx) })

	// accepted waits until policy name's Ballast status has check pass.
	accepted := func(name string, check func(metav1.Condition) error) {
		t.Helper()
		deadline := time.Now().Add(waitTimeout)
		for {
			err := fmt.Errorf("no status under %s", discovery.ControllerName)
			u, gerr := policies.Get(ctx, name, metav1.GetOptions{})
			if gerr != nil {
				t.Fatal(gerr)
			}
			var p v1alpha1.TrafficPolicy
			if cerr := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &p); cerr != nil {
				t.Fatal(cerr)
			}
			for _, a := range p.Status.Ancestors {
				if a.ControllerName == discovery.ControllerName && len(a.Conditions) == 1 {
					err = check(a.Conditions[0])
					if err == nil && (*a.AncestorRef.Kind != "Service" || a.AncestorRef.Name == "") {
						err = fmt.Errorf("ancestorRef %+v, want the Service targeted", a.AncestorRef)
					}
				}
			}
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v", name, err)
			}
			time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
		}
	}
	is := func(reason gatewayv1.PolicyConditionReason, msg string) func(metav1.Condition) error {
		return func(c metav1.Condition) error {
			want := metav1.ConditionFalse
			if reason == gatewayv1.PolicyReasonAccepted {
				want = metav1.ConditionTrue
			}
			if c.Type != "Accepted" || c.Status != want || c.Reason != string(reason) || !strings.Contains(c.Message, msg) || c.ObservedGeneration != 1 {
				return fmt.Errorf("%+v, want %s with %q", c, reason, msg)
			}
			return nil
		}
	}
	accepted("older", is(gatewayv1.PolicyReasonAccepted, "spec.timeouts.backendRequest: PerTryTimeout is not applied by proxyless clients"))
	accepted("younger", is(gatewayv1.PolicyReasonConflicted, ns+"/older"))
	accepted("nowhere", is(gatewayv1.PolicyReasonTargetNotFound, "Service "+ns+"/missing does not exist"))
	timeout := func() time.Duration {
		svc, ok := reg.Get(discovery.Key{Namespace: ns, Name: "greeter"})
		if !ok {
			return -1
		}
		return svc.Call.Timeout
	}
	if got := timeout(); got != 200*time.Millisecond {
		t.Errorf("greeter's call timeout %v, want the older policy's 200ms", got)
	}
	if err := policies.Delete(ctx, "older", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	accepted("younger", is(gatewayv1.PolicyReasonAccepted, "accepted"))
	if got := timeout(); got != 5*time.Second {
		t.Errorf("greeter's call timeout %v once the older is gone, want 5s", got)
	}
}
