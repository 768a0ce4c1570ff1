package discovery

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/ballast-dev/ballast/api/v1alpha1"
	"github.com/ballast-dev/ballast/policy"
)

// trafficPolicy is TrafficPolicy default/name created at minute age of
// 2026, with the given spec (YAML).
func trafficPolicy(t *testing.T, name string, minute int, spec string) *v1alpha1.TrafficPolicy {
	t.Helper()
	p := &v1alpha1.TrafficPolicy{ObjectMeta: policyMeta(name, minute)}
	unmarshalSpec(t, name, spec, &p.Spec)
	return p
}

// policyMeta is the metadata of policy default/name at generation 1,
// created at minute age of 2026.
func policyMeta(name string, minute int) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: "default", Generation: 1,
		CreationTimestamp: metav1.NewTime(time.Date(2026, 1, 1, 0, minute, 0, 0, time.UTC))}
}

func unmarshalSpec(t *testing.T, name, spec string, into any) {
	t.Helper()
	if err := yaml.UnmarshalStrict([]byte(spec), into); err != nil {
		t.Fatalf("policy %s: %v", name, err)
	}
}

// policyRegistry holds the Services greeter and greeter-v2 and the
// GRPCRoute r, whose rule slow sends SayHello to greeter-v2 and rule rest
// the other calls to greeter: the policy tests attach to these.
func policyRegistry(t *testing.T) *Registry {
	t.Helper()
	r := NewRegistry()
	r.Set(svcWithPorts("default", "greeter", 50051))
	r.Set(svcWithPorts("default", "greeter-v2", 50051))
	r.SetRoute(grpcRoute(t, "r", `- name: slow
  matches: [{method: {service: helloworld.Greeter, method: SayHello}}]
  backendRefs: [{name: greeter-v2, port: 50051}]
- name: rest
  backendRefs: [{name: greeter, port: 50051}]
`))
	return r
}

const (
	onService = "targetRefs: [{group: '', kind: Service, name: greeter}]\n"
	onSlow    = "targetRefs: [{group: gateway.networking.k8s.io, kind: GRPCRoute, name: r, sectionName: slow}]\n"
)

func TestCallPolicyOf(t *testing.T) {
	for _, tc := range []struct {
		name, spec string
		want       policy.CallPolicy
	}{
		{name: "nothing", spec: onService},
		{name: "timeouts", spec: onService + "timeouts: {request: 200ms, backendRequest: 100ms}",
			want: policy.CallPolicy{Timeout: 200 * time.Millisecond, TryTimeout: 100 * time.Millisecond}},
		{name: "retry defaults: one attempt on Unavailable", spec: onService + "retry: {}",
			want: policy.CallPolicy{Retry: &policy.Retry{Codes: []codes.Code{codes.Unavailable}, Attempts: 1}}},
		{name: "attempts 0 retries nothing", spec: onService + "retry: {codes: [Internal], attempts: 0}"},
		{name: "codes sorted, each once", spec: onService + "retry: {codes: [Unavailable, Internal, Unavailable], attempts: 2, backoff: 10ms}",
			want: policy.CallPolicy{Retry: &policy.Retry{Codes: []codes.Code{codes.Internal, codes.Unavailable}, Attempts: 2, Backoff: 10 * time.Millisecond}}},
		{name: "budget defaults", spec: onService + "retry: {attempts: 1, budget: {}}",
			want: policy.CallPolicy{Retry: &policy.Retry{Codes: []codes.Code{codes.Unavailable}, Attempts: 1,
				Budget: &policy.RetryBudget{Percent: 20, Interval: 10 * time.Second}}}},
		{name: "min retry rate scaled to the budget's interval", spec: onService + "retry: {attempts: 1, budget: {percent: 5, interval: 10s, minRetryRate: {count: 3, interval: 1s}}}",
			want: policy.CallPolicy{Retry: &policy.Retry{Codes: []codes.Code{codes.Unavailable}, Attempts: 1,
				Budget: &policy.RetryBudget{Percent: 5, Interval: 10 * time.Second, MinRetries: 30}}}},
		{name: "rate limit, burst 1 when absent", spec: onService + "rateLimit: {requestsPerSecond: 100}",
			want: policy.CallPolicy{RateLimit: &policy.RateLimit{RequestsPerSecond: 100, Burst: 1}}},
		{name: "fault", spec: onService + "fault: {delay: {fixed: 20ms, percent: 5}, abort: {code: Unavailable, percent: 10}}",
			want: policy.CallPolicy{Fault: &policy.Fault{Delay: 20 * time.Millisecond, DelayPercent: 5, AbortCode: codes.Unavailable, AbortPercent: 10}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := trafficPolicy(t, "p", 0, tc.spec)
			if err := p.Spec.Validate(); err != nil {
				t.Fatal(err)
			}
			if got := CallPolicyOf(&p.Spec); !equalCall(got, tc.want) {
				t.Errorf("CallPolicyOf = %+v (retry %+v), want %+v (retry %+v)", got, got.Retry, tc.want, tc.want.Retry)
			}
		})
	}
}

func equalCall(a, b policy.CallPolicy) bool { return equality.Semantic.DeepEqual(a, b) }

// Attachment: a Service's policy applies to the port without a route and
// to every rule of its routes; a rule's own policy wins over it; of two
// on one target the older applies and the other is Conflicted; a policy
// naming nothing is TargetNotFound; an invalid edit keeps the last good
// version and says so.
func TestPolicyAttachment(t *testing.T) {
	r := policyRegistry(t)
	sub := r.SubscribePolicies()
	defer sub.Close()

	svcPolicy := trafficPolicy(t, "svc", 1, onService+"timeouts: {request: 1s}")
	r.SetPolicy(svcPolicy)
	rulePolicy := trafficPolicy(t, "slow", 2, onSlow+"timeouts: {request: 200ms}\nretry: {codes: [Unavailable, Aborted], attempts: 2, budget: {}}")
	r.SetPolicy(rulePolicy)

	calls := func() map[string]time.Duration {
		out := map[string]time.Duration{}
		s, _ := r.Get(greeter)
		for _, pr := range s.Routes {
			for _, rule := range pr.Rules {
				out[rule.Name] = rule.Call.Timeout
			}
		}
		return out
	}
	if got := calls(); got["default/r/slow"] != 200*time.Millisecond || got["default/r/rest"] != time.Second {
		t.Errorf("rule timeouts %v, want slow 200ms (its own), rest 1s (the Service's)", got)
	}
	if rt, ok := r.Route(greeterV2, 50051); ok {
		t.Errorf("greeter-v2 has a route %+v; it has neither a GRPCRoute nor a policy", rt)
	}
	r.SetPolicy(trafficPolicy(t, "v2", 3, "targetRefs: [{group: '', kind: Service, name: greeter-v2}]\ntimeouts: {request: 3s}"))
	if rt, ok := r.Route(greeterV2, 50051); !ok || len(rt.Rules) != 1 || rt.Rules[0].Call.Timeout != 3*time.Second {
		t.Errorf("greeter-v2's route %+v, %v: want one rule of every call with its policy's 3s", rt, ok)
	}

	status := func(k string) []gatewayv1.PolicyAncestorStatus {
		t.Helper()
		_, anc, ok := r.PolicyStatus(Key{"default", k})
		if !ok {
			t.Fatalf("no status for %s", k)
		}
		return anc
	}
	accepted := func(k string) metav1.Condition { return status(k)[0].Conditions[0] }

	if c := accepted("slow"); c.Status != metav1.ConditionTrue || c.Reason != "Accepted" ||
		!strings.Contains(c.Message, "spec.retry.codes[1] (Aborted): RetryCodes is not applied by proxyless clients") ||
		!strings.Contains(c.Message, "spec.retry.budget: RetryBudget is not applied by proxyless clients") {
		t.Errorf("slow: %+v; want Accepted naming what proxyless does not honour", c)
	}
	if a := status("slow")[0]; a.AncestorRef.Name != "r" || *a.AncestorRef.Kind != "GRPCRoute" || *a.AncestorRef.SectionName != "slow" || a.ControllerName != ControllerName {
		t.Errorf("ancestor %+v, want the rule targeted", a)
	}

	// A younger policy on the Service conflicts; the older one stays.
	r.SetPolicy(trafficPolicy(t, "younger", 5, onService+"timeouts: {request: 5s}"))
	if c := accepted("younger"); c.Reason != "Conflicted" || !strings.Contains(c.Message, "default/svc") {
		t.Errorf("younger: %+v, want Conflicted naming default/svc", c)
	}
	if got := calls(); got["default/r/rest"] != time.Second {
		t.Errorf("rest's timeout %v after a younger policy, want the older's 1s", got["default/r/rest"])
	}
	// An invalid edit of the older keeps its last good version.
	bad := trafficPolicy(t, "svc", 1, onService+"timeouts: {request: 1.5s}")
	bad.Generation = 2
	r.SetPolicy(bad)
	if c := accepted("svc"); c.Reason != "Invalid" || !strings.Contains(c.Message, "spec.timeouts.request") || !strings.Contains(c.Message, "keep generation 1") {
		t.Errorf("invalid edit: %+v", c)
	}
	if got := calls(); got["default/r/rest"] != time.Second {
		t.Errorf("rest's timeout %v after an invalid edit, want the last good 1s", got["default/r/rest"])
	}
	// Deleting the older hands the Service to the younger.
	r.DeletePolicy(Key{"default", "svc"})
	if got := calls(); got["default/r/rest"] != 5*time.Second {
		t.Errorf("rest's timeout %v once the older is gone, want 5s", got["default/r/rest"])
	}
	if c := accepted("younger"); c.Reason != "Accepted" {
		t.Errorf("younger once alone: %+v", c)
	}
	// A policy on a rule that does not exist.
	r.SetPolicy(trafficPolicy(t, "nowhere", 6, "targetRefs: [{group: gateway.networking.k8s.io, kind: GRPCRoute, name: r, sectionName: nope}]\ntimeouts: {request: 1s}"))
	if c := accepted("nowhere"); c.Reason != "TargetNotFound" || !strings.Contains(c.Message, "rule nope") {
		t.Errorf("nowhere: %+v", c)
	}
	// Removing the rule's policy gives the rule the Service's.
	r.DeletePolicy(Key{"default", "slow"})
	if got := calls(); got["default/r/slow"] != 5*time.Second {
		t.Errorf("slow's timeout %v without its own policy, want the Service's 5s", got["default/r/slow"])
	}
	if keys := sub.Drain(); len(keys) == 0 {
		t.Error("no policy status change was signalled")
	}
}
