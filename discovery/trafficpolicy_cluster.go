package discovery

import (
	"fmt"
	"time"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ballast-dev/ballast/api/v1alpha1"
	"github.com/ballast-dev/ballast/policy"
)

// The cluster-level fields of a TrafficPolicy (circuitBreaker,
// outlierDetection): they shape how a Service's endpoints are used, so
// they apply to the Service's own Clusters, whichever route's calls reach
// them, and only a policy on a Service sets them. A policy on a GRPCRoute
// or one of its rules that has them is Accepted with a message saying
// they are ignored there: a rule's backends are Services, whose own
// policies say how their endpoints are used.

// ClusterPolicyOf is what a valid TrafficPolicy spec asks of the Clusters
// of the Service it is attached to: the Cluster's fields but its Name and
// LB, with gRFC A50's defaults applied (policy.DefaultOutlierDetection).
// An algorithm whose enforcementPercentage is 0 ejects nothing, so it is
// left out, as xDS says it (gRFC A50).
func ClusterPolicyOf(s *v1alpha1.TrafficPolicySpec) policy.Cluster {
	var out policy.Cluster
	u := func(p *int32, def uint32) uint32 {
		if p == nil {
			return def
		}
		return uint32(*p)
	}
	d := func(p *gatewayv1.Duration, def time.Duration) time.Duration {
		if p == nil {
			return def
		}
		v, _ := v1alpha1.ParseDuration(*p)
		return v
	}
	if c := s.CircuitBreaker; c != nil {
		out.CircuitBreaker = policy.CircuitBreaker{
			MaxRequests: u(c.MaxRequests, 0), MaxPendingRequests: u(c.MaxPendingRequests, 0), MaxConnections: u(c.MaxConnections, 0),
		}
	}
	o := s.OutlierDetection
	if o == nil {
		return out
	}
	def, sr0, fp0 := policy.DefaultOutlierDetection, policy.DefaultSuccessRate, policy.DefaultFailurePercentage
	od := &policy.OutlierDetection{
		Interval:           d(o.Interval, def.Interval),
		BaseEjectionTime:   d(o.BaseEjectionTime, def.BaseEjectionTime),
		MaxEjectionTime:    d(o.MaxEjectionTime, def.MaxEjectionTime),
		MaxEjectionPercent: u(o.MaxEjectionPercent, def.MaxEjectionPercent),
		ConsecutiveErrors:  u(o.ConsecutiveErrors, 0),
	}
	if sr := o.SuccessRateEjection; sr != nil && u(sr.EnforcementPercentage, sr0.EnforcementPercentage) > 0 {
		od.SuccessRate = &policy.SuccessRateEjection{
			StdevFactor:           u(sr.StdevFactor, sr0.StdevFactor),
			EnforcementPercentage: u(sr.EnforcementPercentage, sr0.EnforcementPercentage),
			MinimumHosts:          u(sr.MinimumHosts, sr0.MinimumHosts),
			RequestVolume:         u(sr.RequestVolume, sr0.RequestVolume),
		}
	}
	if fp := o.FailurePercentageEjection; fp != nil && u(fp.EnforcementPercentage, fp0.EnforcementPercentage) > 0 {
		od.FailurePercentage = &policy.FailurePercentageEjection{
			Threshold:             u(fp.Threshold, fp0.Threshold),
			EnforcementPercentage: u(fp.EnforcementPercentage, fp0.EnforcementPercentage),
			MinimumHosts:          u(fp.MinimumHosts, fp0.MinimumHosts),
			RequestVolume:         u(fp.RequestVolume, fp0.RequestVolume),
		}
	}
	out.Outlier = od
	return out
}

// serviceClusterLocked is the cluster policy of the TrafficPolicy
// attached to the Service k; the zero Cluster if none is.
func (r *Registry) serviceClusterLocked(k Key) policy.Cluster {
	if p, ok := r.attached[policyTarget{kind: "Service", key: k}]; ok {
		return ClusterPolicyOf(&p.Spec)
	}
	return policy.Cluster{}
}

// clusterNotices say which cluster-level fields of a spec some modes do
// not honour, and, on a target other than a Service, that they are
// ignored there.
func clusterNotices(s *v1alpha1.TrafficPolicySpec, t policyTarget) []string {
	var notes []string
	var fields []string
	if s.CircuitBreaker != nil {
		fields = append(fields, "spec.circuitBreaker")
	}
	if s.OutlierDetection != nil {
		fields = append(fields, "spec.outlierDetection")
	}
	if len(fields) == 0 {
		return nil
	}
	if t.kind != "Service" {
		for _, f := range fields {
			notes = append(notes, fmt.Sprintf("%s is ignored on %s: it applies to a Service's endpoints, so only a policy on a Service sets it (the rule's backends follow their own Services' policies)", f, t))
		}
		return notes
	}
	add := func(f policy.Feature, where string) {
		if n := f.Notice(where); n != "" {
			notes = append(notes, n)
		}
	}
	if c := s.CircuitBreaker; c != nil {
		if c.MaxRequests != nil {
			add(policy.MaxRequests, "spec.circuitBreaker.maxRequests")
		}
		if c.MaxPendingRequests != nil {
			add(policy.MaxPendingRequests, "spec.circuitBreaker.maxPendingRequests")
		}
		if c.MaxConnections != nil {
			add(policy.MaxConnections, "spec.circuitBreaker.maxConnections")
		}
	}
	if o := s.OutlierDetection; o != nil {
		if o.SuccessRateEjection != nil {
			add(policy.SuccessRateFeature, "spec.outlierDetection.successRateEjection")
		}
		if o.FailurePercentageEjection != nil {
			add(policy.FailurePercentageFeature, "spec.outlierDetection.failurePercentageEjection")
		}
		if o.ConsecutiveErrors != nil {
			add(policy.ConsecutiveErrors, "spec.outlierDetection.consecutiveErrors")
		}
	}
	return notes
}
