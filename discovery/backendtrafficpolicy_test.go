package discovery

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayx "sigs.k8s.io/gateway-api/apisx/v1alpha1"

	"github.com/ballast-dev/ballast/policy"
)

// backendPolicy is XBackendTrafficPolicy default/name created at minute
// age of 2026, with the given spec (YAML).
func backendPolicy(t *testing.T, name string, minute int, spec string) *gatewayx.XBackendTrafficPolicy {
	t.Helper()
	p := &gatewayx.XBackendTrafficPolicy{ObjectMeta: policyMeta(name, minute)}
	unmarshalSpec(t, name, spec, &p.Spec)
	return p
}

func TestBackendBudgetOf(t *testing.T) {
	for _, tc := range []struct {
		name, spec string
		want       *policy.RetryBudget
	}{
		{name: "none", spec: onService},
		{name: "the CRD's defaults", spec: onService + "retryConstraint: {}",
			want: &policy.RetryBudget{Percent: 20, Interval: 10 * time.Second, MinRetries: 100}},
		{name: "min retry rate scaled to the budget's interval", spec: onService + "retryConstraint: {budget: {percent: 30, interval: 5s}, minRetryRate: {count: 2, interval: 1s}}",
			want: &policy.RetryBudget{Percent: 30, Interval: 5 * time.Second, MinRetries: 10}},
		{name: "min retry rate without an interval counts per budget interval", spec: onService + "retryConstraint: {budget: {percent: 0}, minRetryRate: {count: 3}}",
			want: &policy.RetryBudget{Percent: 0, Interval: 10 * time.Second, MinRetries: 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := backendPolicy(t, "p", 0, tc.spec)
			if err := ValidateBackendPolicy(p); err != nil {
				t.Fatal(err)
			}
			got := BackendBudgetOf(&p.Spec)
			if (got == nil) != (tc.want == nil) || (got != nil && *got != *tc.want) {
				t.Errorf("BackendBudgetOf = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestValidateBackendPolicy(t *testing.T) {
	for _, tc := range []struct{ spec, field string }{
		{"targetRefs: []", "spec.targetRefs"},
		{"targetRefs: [{group: '', kind: Service, name: ''}]", "spec.targetRefs[0]"},
		{onService + "retryConstraint: {budget: {percent: 101}}", "spec.retryConstraint.budget.percent"},
		{onService + "retryConstraint: {budget: {interval: 500ms}}", "spec.retryConstraint.budget.interval"},
		{onService + "retryConstraint: {budget: {interval: 2h}}", "spec.retryConstraint.budget.interval"},
		{onService + "retryConstraint: {budget: {interval: 1.5s}}", "spec.retryConstraint.budget.interval"},
		{onService + "retryConstraint: {minRetryRate: {count: -1}}", "spec.retryConstraint.minRetryRate.count"},
		{onService + "retryConstraint: {minRetryRate: {interval: 0s}}", "spec.retryConstraint.minRetryRate.interval"},
	} {
		err := ValidateBackendPolicy(backendPolicy(t, "p", 0, tc.spec))
		if err == nil || !strings.HasPrefix(err.Error(), tc.field) {
			t.Errorf("%s: error %v, want one naming %s", tc.spec, err, tc.field)
		}
	}
}

// An XBackendTrafficPolicy on a Service bounds the retries a TrafficPolicy
// asks for, on the Service and on its routes' rules, unless the
// TrafficPolicy has a budget of its own, which wins; of two on one Service
// the older applies; the status says so, and which modes honour what.
func TestBackendPolicyAttachment(t *testing.T) {
	r := policyRegistry(t)
	sub := r.SubscribeBackendPolicies()
	defer sub.Close()
	status := func(k string) []metav1.Condition {
		t.Helper()
		_, anc, ok := r.BackendPolicyStatus(Key{"default", k})
		if !ok {
			t.Fatalf("no status for %s", k)
		}
		var out []metav1.Condition
		for _, a := range anc {
			if a.ControllerName != ControllerName || len(a.Conditions) != 1 {
				t.Fatalf("%s: ancestor %+v", k, a)
			}
			out = append(out, a.Conditions[0])
		}
		return out
	}
	budgets := func() map[string]*policy.RetryBudget {
		out := map[string]*policy.RetryBudget{}
		s, _ := r.Get(greeter)
		if s.Call.Retry != nil {
			out["service"] = s.Call.Retry.Budget
		}
		for _, pr := range s.Routes {
			for _, rule := range pr.Rules {
				if rule.Call.Retry != nil {
					out[rule.Name] = rule.Call.Retry.Budget
				}
			}
		}
		return out
	}
	xBudget := policy.RetryBudget{Percent: 30, Interval: 5 * time.Second, MinRetries: 10}

	// Nothing retries yet: the budget has nothing to bound, and says so.
	r.SetBackendPolicy(backendPolicy(t, "x", 1, onService+"retryConstraint: {budget: {percent: 30, interval: 5s}, minRetryRate: {count: 2, interval: 1s}}\nsessionPersistence: {sessionName: s, type: Header}"))
	if c := status("x")[0]; c.Reason != "Accepted" || c.Status != metav1.ConditionTrue ||
		!strings.Contains(c.Message, "no TrafficPolicy on Service default/greeter retries") ||
		!strings.Contains(c.Message, "spec.retryConstraint: RetryBudget is not applied by proxyless clients") ||
		!strings.Contains(c.Message, "spec.sessionPersistence: SessionPersistence is not applied by proxyless, sidecar, library clients") {
		t.Errorf("x alone: %+v", c)
	}
	if got := budgets(); len(got) != 0 {
		t.Errorf("retries %v with no TrafficPolicy, want none", got)
	}

	// A TrafficPolicy retries the Service's calls and one rule's own: the
	// XBackendTrafficPolicy bounds both.
	r.SetPolicy(trafficPolicy(t, "svc", 2, onService+"retry: {attempts: 2}"))
	r.SetPolicy(trafficPolicy(t, "slow", 3, onSlow+"retry: {attempts: 1}"))
	got := budgets()
	for _, k := range []string{"service", "default/r/rest", "default/r/slow"} {
		if got[k] == nil || *got[k] != xBudget {
			t.Errorf("%s: budget %+v, want the XBackendTrafficPolicy's %+v", k, got[k], xBudget)
		}
	}
	if c := status("x")[0]; c.Reason != "Accepted" || strings.Contains(c.Message, "no TrafficPolicy") {
		t.Errorf("x with a retrying TrafficPolicy: %+v", c)
	}
	_, anc, _ := r.PolicyStatus(Key{"default", "svc"})
	if c := anc[0].Conditions[0]; !strings.Contains(c.Message, "spec.retry has no budget: XBackendTrafficPolicy default/x's spec.retryConstraint bounds it") {
		t.Errorf("svc's status %+v does not name the budget it takes", c)
	}

	// Of two on one Service the older applies.
	r.SetBackendPolicy(backendPolicy(t, "younger", 4, onService+"retryConstraint: {budget: {percent: 50}}"))
	if c := status("younger")[0]; c.Reason != "Conflicted" || c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, "default/x") {
		t.Errorf("younger: %+v, want Conflicted naming default/x", c)
	}
	if got := budgets(); *got["service"] != xBudget {
		t.Errorf("budget %+v with a younger policy, want the older's", got["service"])
	}

	// A TrafficPolicy's own budget wins, field by field.
	own := trafficPolicy(t, "svc", 2, onService+"retry: {attempts: 2, budget: {percent: 5}}")
	own.Generation = 2
	r.SetPolicy(own)
	if got := budgets(); got["service"].Percent != 5 || *got["default/r/slow"] != xBudget {
		t.Errorf("budgets %+v, %+v: want the TrafficPolicy's 5%% on the Service, the XBackendTrafficPolicy's on the rule without one", got["service"], got["default/r/slow"])
	}
	if c := status("x")[0]; c.Reason != "Accepted" || !strings.Contains(c.Message, "spec.retryConstraint is overridden on Service default/greeter by TrafficPolicy default/svc's spec.retry.budget") {
		t.Errorf("x under a TrafficPolicy's budget: %+v", c)
	}

	// An invalid edit keeps the last good version; deleting it hands the
	// Service to the younger.
	bad := backendPolicy(t, "x", 1, onService+"retryConstraint: {budget: {percent: 150}}")
	bad.Generation = 2
	r.SetBackendPolicy(bad)
	if c := status("x")[0]; c.Reason != "Invalid" || !strings.Contains(c.Message, "spec.retryConstraint.budget.percent") || !strings.Contains(c.Message, "keep generation 1") {
		t.Errorf("invalid edit: %+v", c)
	}
	if got := budgets(); *got["default/r/slow"] != xBudget {
		t.Errorf("budget %+v after an invalid edit, want the last good", got["default/r/slow"])
	}
	r.DeleteBackendPolicy(Key{"default", "x"})
	if got := budgets(); got["default/r/slow"] == nil || got["default/r/slow"].Percent != 50 {
		t.Errorf("budget %+v once the older is gone, want the younger's 50%%", got["default/r/slow"])
	}

	// Targets Ballast cannot apply it to.
	r.SetBackendPolicy(backendPolicy(t, "elsewhere", 5, "targetRefs: [{group: '', kind: Service, name: missing}, {group: multicluster.x-k8s.io, kind: ServiceImport, name: greeter}]\nretryConstraint: {}"))
	if c := status("elsewhere"); len(c) != 2 || c[0].Reason != "TargetNotFound" || !strings.Contains(c[0].Message, "default/missing does not exist") ||
		c[1].Reason != "TargetNotFound" || !strings.Contains(c[1].Message, "core Services only") {
		t.Errorf("elsewhere: %+v", c)
	}
	if keys := sub.Drain(); len(keys) == 0 {
		t.Error("no status change was signalled")
	}
}
