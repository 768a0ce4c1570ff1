package discovery

import (
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/ballast-dev/ballast/policy"
)

func TestClusterPolicyOf(t *testing.T) {
	def, sr, fp := policy.DefaultOutlierDetection, policy.DefaultSuccessRate, policy.DefaultFailurePercentage
	withDefaults := func(edit func(*policy.OutlierDetection)) *policy.OutlierDetection {
		o := def
		edit(&o)
		return &o
	}
	for _, tc := range []struct {
		name, spec string
		want       policy.Cluster
	}{
		{name: "nothing", spec: onService},
		{name: "circuit breaker", spec: onService + "circuitBreaker: {maxRequests: 100, maxPendingRequests: 10, maxConnections: 4}",
			want: policy.Cluster{CircuitBreaker: policy.CircuitBreaker{MaxRequests: 100, MaxPendingRequests: 10, MaxConnections: 4}}},
		{name: "max requests alone", spec: onService + "circuitBreaker: {maxRequests: 1}",
			want: policy.Cluster{CircuitBreaker: policy.CircuitBreaker{MaxRequests: 1}}},
		{name: "outlier detection, nothing on: A50's defaults", spec: onService + "outlierDetection: {}",
			want: policy.Cluster{Outlier: withDefaults(func(*policy.OutlierDetection) {})}},
		{name: "both algorithms with defaults", spec: onService + "outlierDetection: {successRateEjection: {}, failurePercentageEjection: {}}",
			want: policy.Cluster{Outlier: withDefaults(func(o *policy.OutlierDetection) { o.SuccessRate, o.FailurePercentage = &sr, &fp })}},
		{name: "every field", spec: onService + "outlierDetection: {interval: 1s, baseEjectionTime: 2s, maxEjectionTime: 4s, maxEjectionPercent: 100, consecutiveErrors: 3, " +
			"successRateEjection: {stdevFactor: 1000, enforcementPercentage: 50, minimumHosts: 2, requestVolume: 20}, " +
			"failurePercentageEjection: {threshold: 50, enforcementPercentage: 90, minimumHosts: 1, requestVolume: 10}}",
			want: policy.Cluster{Outlier: &policy.OutlierDetection{Interval: time.Second, BaseEjectionTime: 2 * time.Second, MaxEjectionTime: 4 * time.Second,
				MaxEjectionPercent: 100, ConsecutiveErrors: 3,
				SuccessRate:       &policy.SuccessRateEjection{StdevFactor: 1000, EnforcementPercentage: 50, MinimumHosts: 2, RequestVolume: 20},
				FailurePercentage: &policy.FailurePercentageEjection{Threshold: 50, EnforcementPercentage: 90, MinimumHosts: 1, RequestVolume: 10}}}},
		{name: "enforcement 0 leaves an algorithm out", spec: onService + "outlierDetection: {successRateEjection: {enforcementPercentage: 0}, failurePercentageEjection: {enforcementPercentage: 0}}",
			want: policy.Cluster{Outlier: withDefaults(func(*policy.OutlierDetection) {})}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := trafficPolicy(t, "p", 0, tc.spec)
			if err := p.Spec.Validate(); err != nil {
				t.Fatal(err)
			}
			if got := ClusterPolicyOf(&p.Spec); !equality.Semantic.DeepEqual(got, tc.want) {
				t.Errorf("ClusterPolicyOf = %+v (outlier %+v), want %+v (outlier %+v)", got, got.Outlier, tc.want, tc.want.Outlier)
			}
		})
	}
}

// A Service's policy sets its snapshot's Cluster (and a change of it makes
// a new snapshot); a policy on a GRPCRoute rule with cluster fields is
// Accepted, saying they are ignored there, and sets no Cluster.
func TestClusterPolicyAttachment(t *testing.T) {
	r := NewRegistry()
	r.Set(svcWithPorts("default", "greeter", 50051))
	r.Set(svcWithPorts("default", "greeter-v2", 50051))
	r.SetRoute(grpcRoute(t, "r", `- name: slow
  backendRefs: [{name: greeter-v2, port: 50051}]
`))
	cluster := func(k Key) policy.Cluster {
		s, _ := r.Get(k)
		return s.Cluster
	}
	r.SetPolicy(trafficPolicy(t, "svc", 1, onService+"circuitBreaker: {maxRequests: 100}\noutlierDetection: {consecutiveErrors: 2, failurePercentageEjection: {}}"))
	if c := cluster(greeter); c.CircuitBreaker.MaxRequests != 100 || c.Outlier == nil || c.Outlier.ConsecutiveErrors != 2 || c.Outlier.FailurePercentage == nil {
		t.Errorf("greeter's cluster policy %+v (outlier %+v), want its policy's", c, c.Outlier)
	}
	r.SetPolicy(trafficPolicy(t, "slow", 2, onSlow+"circuitBreaker: {maxRequests: 5}"))
	if c := cluster(greeterV2); c.CircuitBreaker.MaxRequests != 0 {
		t.Errorf("greeter-v2's cluster policy %+v: a rule's policy set it", c)
	}
	_, anc, _ := r.PolicyStatus(Key{"default", "slow"})
	if c := anc[0].Conditions[0]; c.Reason != "Accepted" || !strings.Contains(c.Message, "spec.circuitBreaker is ignored on GRPCRoute default/r rule slow") {
		t.Errorf("slow: %+v, want Accepted saying circuitBreaker is ignored on a rule", c)
	}
	_, anc, _ = r.PolicyStatus(Key{"default", "svc"})
	if c := anc[0].Conditions[0]; c.Reason != "Accepted" || !strings.Contains(c.Message, "spec.outlierDetection.consecutiveErrors: OutlierConsecutiveErrors is not applied by proxyless") {
		t.Errorf("svc: %+v, want Accepted naming what proxyless does not honour", c)
	}
	r.DeletePolicy(Key{"default", "svc"})
	if c := cluster(greeter); c.CircuitBreaker.MaxRequests != 0 || c.Outlier != nil {
		t.Errorf("greeter's cluster policy %+v once its policy is deleted, want none", c)
	}
}
