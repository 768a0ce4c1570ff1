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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayx "sigs.k8s.io/gateway-api/apisx/v1alpha1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayxclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/typed/apisx/v1alpha1"
	"sigs.k8s.io/yaml"

	"github.com/ballast-dev/ballast/api/v1alpha1"
	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/kube"
)

// The policy tests share one world: the Service greeter, TrafficPolicies
// on it (the CRD deploy/ installs) and, for some, Gateway API's
// experimental XBackendTrafficPolicy.

// installTrafficPolicyCRD installs the TrafficPolicy CRD of deploy/.
func installTrafficPolicyCRD(t *testing.T) {
	t.Helper()
	if _, err := envtest.InstallCRDs(env.Config, envtest.CRDInstallOptions{Paths: []string{"../../deploy/control/crd"}}); err != nil {
		t.Fatalf("install the TrafficPolicy CRD of deploy/: %v", err)
	}
}

// installBackendPolicyCRD installs the XBackendTrafficPolicy CRD of Gateway
// API's experimental channel, as the release go.mod pins ships it (the
// module's config/crd/experimental), and uninstalls it when the test ends:
// deploy/ does not install it, as a cluster on the standard channel has
// none, and other tests start without it.
func installBackendPolicyCRD(t *testing.T) {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api").Output()
	if err != nil {
		t.Fatalf("find the gateway-api module: %v", err)
	}
	crd := envtest.CRDInstallOptions{Paths: []string{filepath.Join(strings.TrimSpace(string(out)),
		"config", "crd", "experimental", "gateway.networking.x-k8s.io_xbackendtrafficpolicies.yaml")}}
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

// createGreeter creates the Service the policies target: greeter, port grpc
// 50051.
func createGreeter(t *testing.T, ns string) discovery.Key {
	t.Helper()
	if _, err := env.Client.CoreV1().Services(ns).Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "greeter"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "grpc", Port: 50051}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return discovery.Key{Namespace: ns, Name: "greeter"}
}

// createBackendPolicy creates the XBackendTrafficPolicy name with spec,
// given as YAML, retrying until the API server serves the CRD, and returns
// the client of its namespace's XBackendTrafficPolicies.
func createBackendPolicy(t *testing.T, ns, name, spec string) gatewayxclient.XBackendTrafficPolicyInterface {
	t.Helper()
	gc, err := gatewayclient.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	policies := gc.ExperimentalV1alpha1().XBackendTrafficPolicies(ns)
	x := &gatewayx.XBackendTrafficPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := yaml.UnmarshalStrict([]byte(spec), &x.Spec); err != nil {
		t.Fatal(err)
	}
	poll(t, "create XBackendTrafficPolicy "+name, func() error {
		_, err := policies.Create(context.Background(), x, metav1.CreateOptions{})
		return err
	})
	return policies
}

// trafficPolicies reads and writes the TrafficPolicies of namespace ns.
type trafficPolicies struct {
	t         *testing.T
	ns        string
	resources dynamic.ResourceInterface
}

func newTrafficPolicies(t *testing.T, ns string) *trafficPolicies {
	t.Helper()
	dc, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	return &trafficPolicies{t: t, ns: ns, resources: dc.Resource(v1alpha1.GroupVersion.WithResource("trafficpolicies")).Namespace(ns)}
}

// create makes the TrafficPolicy name with spec, given as YAML, retrying
// until the API server serves the CRD: it may not be established yet.
func (p *trafficPolicies) create(name, spec string) {
	p.t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte("spec:\n  "+strings.ReplaceAll(spec, "\n", "\n  ")), &u.Object); err != nil {
		p.t.Fatal(err)
	}
	u.SetAPIVersion(v1alpha1.GroupVersion.String())
	u.SetKind("TrafficPolicy")
	u.SetName(name)
	poll(p.t, "create TrafficPolicy "+name, func() error {
		_, err := p.resources.Create(context.Background(), u, metav1.CreateOptions{})
		return err
	})
}

func (p *trafficPolicies) get(name string) (*v1alpha1.TrafficPolicy, error) {
	u, err := p.resources.Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	var tp v1alpha1.TrafficPolicy
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &tp); err != nil {
		return nil, err
	}
	return &tp, nil
}

func (p *trafficPolicies) delete(name string) {
	p.t.Helper()
	if err := p.resources.Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		p.t.Fatal(err)
	}
}

// runPolicies starts the Kubernetes source with policies on cfg for
// namespace ns, and with it, when status is set, the status writer; both
// stop when the test ends, and the source's error fails it.
func runPolicies(t *testing.T, cfg *rest.Config, ns string, status bool) (*discovery.Registry, *kube.Source) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := discovery.NewRegistry()
	src := kube.New(cfg, reg, kube.Options{Namespace: ns, Logger: log, Policies: true})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	runErr := make(chan error, 1)
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if err := <-runErr; err != nil {
			t.Errorf("source: %v", err)
		}
	})
	wg.Go(func() { runErr <- src.Run(ctx) })
	if status {
		writer := kube.NewStatusWriter(cfg, reg, kube.StatusOptions{LeaseNamespace: ns, Identity: "test", Synced: src.HasSynced, Logger: log})
		wg.Go(func() { writer.Run(ctx) })
	}
	return reg, src
}

// ballastCondition checks Ballast's entry among a policy's ancestors: one
// condition, for the Service the policy targets.
func ballastCondition(ancestors []gatewayv1.PolicyAncestorStatus, service string, check func(metav1.Condition) error) error {
	for _, a := range ancestors {
		if a.ControllerName != discovery.ControllerName {
			continue
		}
		if len(a.Conditions) != 1 || a.AncestorRef.Kind == nil || *a.AncestorRef.Kind != "Service" || a.AncestorRef.Name != gatewayv1.ObjectName(service) {
			return fmt.Errorf("ancestor %+v, want one condition for Service %s", a, service)
		}
		return check(a.Conditions[0])
	}
	return fmt.Errorf("no status under %s", discovery.ControllerName)
}

// accepted checks a condition says Accepted, or, for any other reason,
// not, at generation, its message holding msg.
func accepted(reason gatewayv1.PolicyConditionReason, generation int64, msg string) func(metav1.Condition) error {
	return func(c metav1.Condition) error {
		want := metav1.ConditionFalse
		if reason == gatewayv1.PolicyReasonAccepted {
			want = metav1.ConditionTrue
		}
		if c.Type != "Accepted" || c.Status != want || c.Reason != string(reason) || c.ObservedGeneration != generation || !strings.Contains(c.Message, msg) {
			return fmt.Errorf("%+v, want %s at generation %d saying %q", c, reason, generation, msg)
		}
		return nil
	}
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
