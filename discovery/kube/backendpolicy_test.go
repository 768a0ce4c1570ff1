package kube_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayx "sigs.k8s.io/gateway-api/apisx/v1alpha1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	"sigs.k8s.io/yaml"

	"github.com/ballast-dev/ballast/api/v1alpha1"
	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/kube"
	"github.com/ballast-dev/ballast/policy"
	"github.com/ballast-dev/ballast/xds"
)

// backendPolicyCRD is the XBackendTrafficPolicy CRD of Gateway API's
// experimental channel, as the release go.mod pins ships it (the module's
// config/crd/experimental): deploy/ does not install it, as a cluster on
// the standard channel has none.
func backendPolicyCRD(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api").Output()
	if err != nil {
		t.Fatalf("find the gateway-api module: %v", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "experimental", "gateway.networking.x-k8s.io_xbackendtrafficpolicies.yaml")
}

// servesBackendPolicies reports whether the API server serves
// XBackendTrafficPolicies.
func servesBackendPolicies(t *testing.T) bool {
	t.Helper()
	list, err := env.Client.Discovery().ServerResourcesForGroupVersion(gatewayx.GroupVersion.String())
	if err != nil {
		return false
	}
	for _, r := range list.APIResources {
		if r.Name == "xbackendtrafficpolicies" {
			return true
		}
	}
	return false
}

// TestBackendPolicy runs the Kubernetes source with policies and the
// status writer against a real kube-apiserver without the experimental
// XBackendTrafficPolicy CRD: a TrafficPolicy's retries apply as ever.
// Then the CRD is installed (from the gateway-api module) and an
// XBackendTrafficPolicy with a retry budget on the Service is picked up
// without a restart: the Service's calls carry its budget in the route the
// Go library balances by and in the xDS the sidecar reads, and its status
// is Accepted, saying proxyless clients do not honour the budget.
func TestBackendPolicy(t *testing.T) {
	if servesBackendPolicies(t) {
		t.Fatal("the API server already serves XBackendTrafficPolicies: this test starts without their CRD")
	}
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
	trafficPolicies := dc.Resource(v1alpha1.GroupVersion.WithResource("trafficpolicies")).Namespace(ns)
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte("spec: {targetRefs: [{group: '', kind: Service, name: greeter}], retry: {codes: [Unavailable], attempts: 2}}"), &u.Object); err != nil {
		t.Fatal(err)
	}
	u.SetAPIVersion(v1alpha1.GroupVersion.String())
	u.SetKind("TrafficPolicy")
	u.SetName("retry")
	poll(t, "create TrafficPolicy retry", func() error { // the CRD may not be established yet
		_, err := trafficPolicies.Create(ctx, u, metav1.CreateOptions{})
		return err
	})

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := discovery.NewRegistry()
	src := kube.New(env.Config, reg, kube.Options{Namespace: ns, Logger: log, Policies: true})
	writer := kube.NewStatusWriter(env.Config, reg, kube.StatusOptions{LeaseNamespace: ns, Identity: "test", Synced: src.HasSynced, Logger: log})
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	runErr := make(chan error, 1)
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if err := <-runErr; err != nil {
			t.Errorf("source: %v", err)
		}
	})
	wg.Go(func() { runErr <- src.Run(rctx) })
	wg.Go(func() { writer.Run(rctx) })

	greeter := discovery.Key{Namespace: ns, Name: "greeter"}
	retry := func() (*policy.Retry, error) {
		svc, ok := reg.Get(greeter)
		if !ok || svc.Call.Retry == nil {
			return nil, fmt.Errorf("greeter has no retry policy yet")
		}
		return svc.Call.Retry, nil
	}
	// Without the CRD: the TrafficPolicy applies, with no budget.
	poll(t, "the TrafficPolicy's retry", func() error { _, err := retry(); return err })
	if r, _ := retry(); r.Attempts != 2 || r.Budget != nil {
		t.Errorf("retry %+v, want 2 attempts and no budget", r)
	}

	// The CRD installed while the source runs, and a policy on greeter.
	crd := envtest.CRDInstallOptions{Paths: []string{backendPolicyCRD(t)}}
	if _, err := envtest.InstallCRDs(env.Config, crd); err != nil {
		t.Fatalf("install the XBackendTrafficPolicy CRD: %v", err)
	}
	t.Cleanup(func() {
		if err := envtest.UninstallCRDs(env.Config, crd); err != nil {
			t.Errorf("uninstall the XBackendTrafficPolicy CRD: %v", err)
		}
		poll(t, "the XBackendTrafficPolicy CRD gone", func() error {
			if servesBackendPolicies(t) {
				return fmt.Errorf("still served")
			}
			return nil
		})
	})
	gc, err := gatewayclient.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	x := &gatewayx.XBackendTrafficPolicy{ObjectMeta: metav1.ObjectMeta{Name: "budget"}}
	if err := yaml.UnmarshalStrict([]byte(`targetRefs: [{group: "", kind: Service, name: greeter}]
retryConstraint: {budget: {percent: 25, interval: 10s}, minRetryRate: {count: 1, interval: 1s}}`), &x.Spec); err != nil {
		t.Fatal(err)
	}
	poll(t, "create XBackendTrafficPolicy budget", func() error {
		_, err := gc.ExperimentalV1alpha1().XBackendTrafficPolicies(ns).Create(ctx, x, metav1.CreateOptions{})
		return err
	})
	want := policy.RetryBudget{Percent: 25, Interval: 10 * time.Second, MinRetries: 10}
	poll(t, "the XBackendTrafficPolicy's budget on greeter's calls", func() error {
		r, err := retry()
		if err != nil {
			return err
		}
		if r.Budget == nil || *r.Budget != want {
			return fmt.Errorf("retry %+v budget %+v, want %+v", r, r.Budget, want)
		}
		return nil
	})

	// The Go library's form: the route balancer/route balances greeter's
	// calls by.
	if rt, ok := reg.Route(greeter, 50051); !ok || len(rt.Rules) != 1 || rt.Rules[0].Call.Retry == nil ||
		rt.Rules[0].Call.Retry.Budget == nil || *rt.Rules[0].Call.Retry.Budget != want {
		t.Errorf("library route %+v, %v: want one rule with the budget %+v", rt, ok, want)
	}
	// The sidecar's: the RouteConfiguration's retry_policy and Ballast's
	// route metadata, which xds/client decodes (its round-trip tests).
	svc, _ := reg.Get(greeter)
	res, err := xds.TranslateService(svc, xds.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Routes) != 1 || len(res.Routes[0].VirtualHosts) != 1 || len(res.Routes[0].VirtualHosts[0].Routes) != 1 {
		t.Fatalf("xDS routes %v, want one route of one rule", res.Routes)
	}
	route := res.Routes[0].VirtualHosts[0].Routes[0]
	budget := route.GetMetadata().GetFilterMetadata()["ballast.dev"].GetFields()["retry_budget"].GetStructValue().GetFields()
	if route.GetRoute().GetRetryPolicy().GetNumRetries().GetValue() != 2 || budget["percent"].GetNumberValue() != 25 ||
		budget["interval"].GetStringValue() != "10s" || budget["min_retries"].GetNumberValue() != 10 {
		t.Errorf("xDS route %v: want 2 retries and the budget 25%% over 10s, 10 at least", route)
	}

	// Status, on the XBackendTrafficPolicy and on the TrafficPolicy.
	poll(t, "XBackendTrafficPolicy budget Accepted", func() error {
		p, err := gc.ExperimentalV1alpha1().XBackendTrafficPolicies(ns).Get(ctx, "budget", metav1.GetOptions{})
		if err != nil {
			return err
		}
		return ballastAccepted(p.Status.Ancestors, p.Generation, "spec.retryConstraint: RetryBudget is not applied by proxyless clients")
	})
	poll(t, "TrafficPolicy retry Accepted, naming its budget", func() error {
		u, err := trafficPolicies.Get(ctx, "retry", metav1.GetOptions{})
		if err != nil {
			return err
		}
		var p v1alpha1.TrafficPolicy
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &p); err != nil {
			return err
		}
		return ballastAccepted(p.Status.Ancestors, p.Generation, "XBackendTrafficPolicy "+ns+"/budget's spec.retryConstraint bounds it")
	})

	// Deleting it takes the budget away.
	if err := gc.ExperimentalV1alpha1().XBackendTrafficPolicies(ns).Delete(ctx, "budget", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, "greeter's retries without a budget", func() error {
		if r, err := retry(); err != nil || r.Budget != nil {
			return fmt.Errorf("retry %+v (%v), want one without a budget", r, err)
		}
		return nil
	})
}

// ballastAccepted says whether ancestors hold Ballast's entry for the
// Service greeter with Accepted True at generation, its message holding
// msg.
func ballastAccepted(ancestors []gatewayv1.PolicyAncestorStatus, generation int64, msg string) error {
	for _, a := range ancestors {
		if a.ControllerName != discovery.ControllerName {
			continue
		}
		if len(a.Conditions) != 1 || a.AncestorRef.Kind == nil || *a.AncestorRef.Kind != "Service" || a.AncestorRef.Name != "greeter" {
			return fmt.Errorf("ancestor %+v, want one condition for Service greeter", a)
		}
		c := a.Conditions[0]
		if c.Type != "Accepted" || c.Status != metav1.ConditionTrue || c.ObservedGeneration != generation || !strings.Contains(c.Message, msg) {
			return fmt.Errorf("%+v, want Accepted at generation %d saying %q", c, generation, msg)
		}
		return nil
	}
	return fmt.Errorf("no status under %s", discovery.ControllerName)
}

// poll calls f until it succeeds, failing the test at waitTimeout with
// its last error.
func poll(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
}

// TestBackendPolicyForbidden: the cluster has the XBackendTrafficPolicy CRD
// (another implementation installed it) but Ballast's RBAC does not let it
// list them. The source syncs and serves the rest as ever; once a
// ClusterRole lets it, it reads them without a restart.
func TestBackendPolicyForbidden(t *testing.T) {
	crd := envtest.CRDInstallOptions{Paths: []string{backendPolicyCRD(t)}}
	if _, err := envtest.InstallCRDs(env.Config, envtest.CRDInstallOptions{Paths: []string{"../../deploy/control/crd", backendPolicyCRD(t)}}); err != nil {
		t.Fatalf("install the CRDs: %v", err)
	}
	t.Cleanup(func() {
		if err := envtest.UninstallCRDs(env.Config, crd); err != nil {
			t.Errorf("uninstall the XBackendTrafficPolicy CRD: %v", err)
		}
		poll(t, "the XBackendTrafficPolicy CRD gone", func() error {
			if servesBackendPolicies(t) {
				return fmt.Errorf("still served")
			}
			return nil
		})
	})
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
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte("spec: {targetRefs: [{group: '', kind: Service, name: greeter}], retry: {attempts: 2}}"), &u.Object); err != nil {
		t.Fatal(err)
	}
	u.SetAPIVersion(v1alpha1.GroupVersion.String())
	u.SetKind("TrafficPolicy")
	u.SetName("retry")
	poll(t, "create TrafficPolicy retry", func() error {
		_, err := dc.Resource(v1alpha1.GroupVersion.WithResource("trafficpolicies")).Namespace(ns).Create(ctx, u, metav1.CreateOptions{})
		return err
	})
	gc, err := gatewayclient.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	x := &gatewayx.XBackendTrafficPolicy{ObjectMeta: metav1.ObjectMeta{Name: "budget"}}
	if err := yaml.UnmarshalStrict([]byte(`targetRefs: [{group: "", kind: Service, name: greeter}]
retryConstraint: {budget: {percent: 25, interval: 10s}}`), &x.Spec); err != nil {
		t.Fatal(err)
	}
	poll(t, "create XBackendTrafficPolicy budget", func() error {
		_, err := gc.ExperimentalV1alpha1().XBackendTrafficPolicies(ns).Create(ctx, x, metav1.CreateOptions{})
		return err
	})

	// The source runs as a user who may read all it reads but
	// XBackendTrafficPolicies.
	user := "ballast-" + ns
	grant := func(name string, rules ...rbacv1.PolicyRule) {
		t.Helper()
		if _, err := env.Client.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := env.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
			Subjects: []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = env.Client.RbacV1().ClusterRoleBindings().Delete(ctx, name, metav1.DeleteOptions{})
			_ = env.Client.RbacV1().ClusterRoles().Delete(ctx, name, metav1.DeleteOptions{})
		})
	}
	read := []string{"get", "list", "watch"}
	grant(user, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: read},
		rbacv1.PolicyRule{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: read},
		rbacv1.PolicyRule{APIGroups: []string{v1alpha1.GroupVersion.Group}, Resources: []string{"trafficpolicies"}, Verbs: read})
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user}

	reg := discovery.NewRegistry()
	src := kube.New(cfg, reg, kube.Options{Namespace: ns, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Policies: true})
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	runErr := make(chan error, 1)
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if err := <-runErr; err != nil {
			t.Errorf("source: %v", err)
		}
	})
	wg.Go(func() { runErr <- src.Run(rctx) })
	greeter := discovery.Key{Namespace: ns, Name: "greeter"}
	budget := func() (*policy.RetryBudget, error) {
		svc, ok := reg.Get(greeter)
		if !ok || svc.Call.Retry == nil {
			return nil, fmt.Errorf("greeter has no retry policy yet")
		}
		return svc.Call.Retry.Budget, nil
	}
	poll(t, "synced, with the TrafficPolicy's retry", func() error {
		if !src.HasSynced() {
			return fmt.Errorf("not synced")
		}
		_, err := budget()
		return err
	})
	if b, _ := budget(); b != nil {
		t.Errorf("budget %+v while the source may not read XBackendTrafficPolicies, want none", b)
	}

	grant(user+"-x", rbacv1.PolicyRule{APIGroups: []string{gatewayx.GroupName}, Resources: []string{"xbackendtrafficpolicies"}, Verbs: read})
	poll(t, "the XBackendTrafficPolicy's budget once the source may read it", func() error {
		b, err := budget()
		if err == nil && (b == nil || b.Percent != 25) {
			err = fmt.Errorf("budget %+v, want 25%%", b)
		}
		return err
	})
}
