package kube_test

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// TestPolicyStatus runs the Kubernetes source with policies and the status
// writer against a real kube-apiserver with the TrafficPolicy CRD deploy/
// installs: a policy on a Service applies to its calls and is Accepted,
// its message naming what proxyless clients cannot honour; a younger one
// on the same Service is Conflicted; one on a Service that does not exist
// is TargetNotFound; deleting the older hands the Service to the younger.
func TestPolicyStatus(t *testing.T) {
	installTrafficPolicyCRD(t)
	ns := env.Namespace(t, "discovery")
	greeter := createGreeter(t, ns)
	policies := newTrafficPolicies(t, ns)
	policies.create("older", "targetRefs: [{group: '', kind: Service, name: greeter}]\ntimeouts: {request: 200ms, backendRequest: 100ms}")
	// creationTimestamp has a resolution of a second: make the next younger.
	older, err := policies.get("older")
	if err != nil {
		t.Fatal(err)
	}
	for time.Now().Truncate(time.Second).Equal(older.CreationTimestamp.Truncate(time.Second)) {
		time.Sleep(20 * time.Millisecond) // waiting out the clock's second, not synchronisation
	}
	policies.create("younger", "targetRefs: [{group: '', kind: Service, name: greeter}]\ntimeouts: {request: 5s}")
	policies.create("nowhere", "targetRefs: [{group: '', kind: Service, name: missing}]\ntimeouts: {request: 5s}")

	reg, _ := runPolicies(t, env.Config, ns, true)

	status := func(name, service string, check func(metav1.Condition) error) {
		t.Helper()
		poll(t, "TrafficPolicy "+name+"'s status", func() error {
			p, err := policies.get(name)
			if err != nil {
				return err
			}
			return ballastCondition(p.Status.Ancestors, service, check)
		})
	}
	status("older", "greeter", accepted(gatewayv1.PolicyReasonAccepted, 1, "spec.timeouts.backendRequest: PerTryTimeout is not applied by proxyless clients"))
	status("younger", "greeter", accepted(gatewayv1.PolicyReasonConflicted, 1, ns+"/older"))
	status("nowhere", "missing", accepted(gatewayv1.PolicyReasonTargetNotFound, 1, "Service "+ns+"/missing does not exist"))
	timeout := func() time.Duration {
		svc, ok := reg.Get(greeter)
		if !ok {
			return -1
		}
		return svc.Call.Timeout
	}
	if got := timeout(); got != 200*time.Millisecond {
		t.Errorf("greeter's call timeout %v, want the older policy's 200ms", got)
	}
	policies.delete("older")
	status("younger", "greeter", accepted(gatewayv1.PolicyReasonAccepted, 1, "accepted"))
	if got := timeout(); got != 5*time.Second {
		t.Errorf("greeter's call timeout %v once the older is gone, want 5s", got)
	}
}
