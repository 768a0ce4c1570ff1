package kube_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayx "sigs.k8s.io/gateway-api/apisx/v1alpha1"

	"github.com/ballast-dev/ballast/api/v1alpha1"
	"github.com/ballast-dev/ballast/policy"
	"github.com/ballast-dev/ballast/xds"
)

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
	installTrafficPolicyCRD(t)
	ns := env.Namespace(t, "discovery")
	ctx := context.Background()
	greeter := createGreeter(t, ns)
	trafficPolicies := newTrafficPolicies(t, ns)
	trafficPolicies.create("retry", "targetRefs: [{group: '', kind: Service, name: greeter}]\nretry: {codes: [Unavailable], attempts: 2}")
	reg, _ := runPolicies(t, env.Config, ns, true)

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
	installBackendPolicyCRD(t)
	budgets := createBackendPolicy(t, ns, "budget", "targetRefs: [{group: '', kind: Service, name: greeter}]\nretryConstraint: {budget: {percent: 25, interval: 10s}, minRetryRate: {count: 1, interval: 1s}}")
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
		p, err := budgets.Get(ctx, "budget", metav1.GetOptions{})
		if err != nil {
			return err
		}
		return ballastCondition(p.Status.Ancestors, "greeter", accepted(gatewayv1.PolicyReasonAccepted, p.Generation, "spec.retryConstraint: RetryBudget is not applied by proxyless clients"))
	})
	poll(t, "TrafficPolicy retry Accepted, naming its budget", func() error {
		p, err := trafficPolicies.get("retry")
		if err != nil {
			return err
		}
		return ballastCondition(p.Status.Ancestors, "greeter", accepted(gatewayv1.PolicyReasonAccepted, p.Generation, "XBackendTrafficPolicy "+ns+"/budget's spec.retryConstraint bounds it"))
	})

	// Deleting it takes the budget away.
	if err := budgets.Delete(ctx, "budget", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, "greeter's retries without a budget", func() error {
		if r, err := retry(); err != nil || r.Budget != nil {
			return fmt.Errorf("retry %+v (%v), want one without a budget", r, err)
		}
		return nil
	})
}

// TestBackendPolicyForbidden: the cluster has the XBackendTrafficPolicy CRD
// (another implementation installed it) but Ballast's RBAC does not let it
// list them. The source syncs and serves the rest as ever; once a
// ClusterRole lets it, it reads them without a restart.
func TestBackendPolicyForbidden(t *testing.T) {
	installTrafficPolicyCRD(t)
	installBackendPolicyCRD(t)
	ns := env.Namespace(t, "discovery")
	ctx := context.Background()
	greeter := createGreeter(t, ns)
	newTrafficPolicies(t, ns).create("retry", "targetRefs: [{group: '', kind: Service, name: greeter}]\nretry: {attempts: 2}")
	createBackendPolicy(t, ns, "budget", "targetRefs: [{group: '', kind: Service, name: greeter}]\nretryConstraint: {budget: {percent: 25, interval: 10s}}")

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

	reg, src := runPolicies(t, cfg, ns, false)
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
