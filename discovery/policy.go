package discovery

import "fmt"

// LBPolicyAnnotation names the Service annotation that picks the load
// balancing policy of all of the Service's ports, for every way Ballast
// balances: the control plane's Clusters (proxyless clients and the
// sidecar) and the kubernetes:/// resolver's service config (the client
// library).
const LBPolicyAnnotation = AnnotationPrefix + "lb-policy"

// LBPolicy is a load balancing policy a Service asks its clients to use.
type LBPolicy string

// The policies a Service may ask for. Each is handed to clients as an
// ordered list (gRFC A52 for xDS, loadBalancingConfig in a service config):
// a client takes the first entry it supports, and every list ends with
// round_robin, which every gRPC implementation has.
const (
	// RoundRobin spreads calls evenly over the ready endpoints.
	RoundRobin LBPolicy = "round_robin"
	// LeastRequest picks the less loaded of two random endpoints (gRFC A48).
	LeastRequest LBPolicy = "least_request"
	// PeakEWMA is Ballast's latency-aware policy. Only Go clients that import
	// balancer/peakewma (which registers "ballast_peak_ewma") can run it;
	// every other client falls back to least_request, then round_robin.
	PeakEWMA LBPolicy = "peak_ewma"
)

// ParseLBPolicy reads a policy name, as written in the annotation or a flag.
func ParseLBPolicy(s string) (LBPolicy, error) {
	switch p := LBPolicy(s); p {
	case RoundRobin, LeastRequest, PeakEWMA:
		return p, nil
	}
	return "", fmt.Errorf("unknown lb policy %q (want %s, %s or %s)", s, RoundRobin, LeastRequest, PeakEWMA)
}

// LBPolicy is the policy the Service's annotation asks for: ok is false
// when it has no annotation, and err names a value that is not a policy.
func (s *Service) LBPolicy() (p LBPolicy, ok bool, err error) {
	v, ok := s.Annotations[LBPolicyAnnotation]
	if !ok {
		return "", false, nil
	}
	p, err = ParseLBPolicy(v)
	if err != nil {
		return "", true, fmt.Errorf("service %s: annotation %s: %w", s.Key, LBPolicyAnnotation, err)
	}
	return p, true, nil
}
