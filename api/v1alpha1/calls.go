package v1alpha1

import (
	"fmt"
	"regexp"
	"strings"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// The fields of a TrafficPolicy that shape how calls are balanced, limited
// and failed on purpose: loadBalancer (a Service's backends), rateLimit and
// fault (each call of the target).

// The load-balancing policies a LoadBalancer may name.
const (
	LBRoundRobin   = "round_robin"
	LBLeastRequest = "least_request"
	LBPeakEWMA     = "peak_ewma"
	LBRingHash     = "ring_hash"
)

// LoadBalancer is how a Service's calls are spread over its endpoints.
type LoadBalancer struct {
	// Policy is round_robin, least_request, peak_ewma or ring_hash.
	Policy string `json:"policy"`
	// HashHeader is ring_hash's key: calls with the same value of this
	// request header go to the same endpoint while it is ready; calls
	// without it go to a random one.
	HashHeader *string `json:"hashHeader,omitempty"`
}

// RateLimit is a local token bucket: each client lets RequestsPerSecond
// calls a second through, Burst of them at once; calls over it fail with
// RESOURCE_EXHAUSTED without being sent.
type RateLimit struct {
	RequestsPerSecond int32 `json:"requestsPerSecond"`
	// Burst is the bucket's size; 1 when absent.
	Burst *int32 `json:"burst,omitempty"`
}

// Fault injects delays and failures (Envoy's HTTP fault filter).
type Fault struct {
	Delay *FaultDelay `json:"delay,omitempty"`
	Abort *FaultAbort `json:"abort,omitempty"`
}

// FaultDelay holds Percent of the calls for Fixed before sending them.
type FaultDelay struct {
	Fixed   gatewayv1.Duration `json:"fixed"`
	Percent int32              `json:"percent"`
}

// FaultAbort fails Percent of the calls with Code (a gRPC status code
// name) without sending them.
type FaultAbort struct {
	Code    string `json:"code"`
	Percent int32  `json:"percent"`
}

// validateDataplane checks loadBalancer, rateLimit and fault.
func (s *TrafficPolicySpec) validateDataplane() error {
	if lb := s.LoadBalancer; lb != nil {
		switch lb.Policy {
		case LBRoundRobin, LBLeastRequest, LBPeakEWMA, LBRingHash:
		default:
			return fmt.Errorf("spec.loadBalancer.policy: %q is not one of %s, %s, %s, %s", lb.Policy, LBRoundRobin, LBLeastRequest, LBPeakEWMA, LBRingHash)
		}
		if h := lb.HashHeader; h != nil {
			if lb.Policy != LBRingHash {
				return fmt.Errorf("spec.loadBalancer.hashHeader: only policy %s hashes a header", LBRingHash)
			}
			if !headerName.MatchString(*h) || strings.HasSuffix(*h, "-bin") {
				return fmt.Errorf("spec.loadBalancer.hashHeader: %q is not a lower-case header name (and not -bin)", *h)
			}
		}
		for i, r := range s.TargetRefs {
			if r.Kind != "Service" {
				return fmt.Errorf("spec.loadBalancer: applies to Service targets only, and spec.targetRefs[%d] is a %s", i, r.Kind)
			}
		}
	}
	if r := s.RateLimit; r != nil {
		if r.RequestsPerSecond < 1 || r.RequestsPerSecond > 1000000 {
			return fmt.Errorf("spec.rateLimit.requestsPerSecond: %d is outside 1..1000000", r.RequestsPerSecond)
		}
		if r.Burst != nil && (*r.Burst < 1 || *r.Burst > 1000000) {
			return fmt.Errorf("spec.rateLimit.burst: %d is outside 1..1000000", *r.Burst)
		}
	}
	if f := s.Fault; f != nil {
		if f.Delay == nil && f.Abort == nil {
			return fmt.Errorf("spec.fault: give delay, abort or both")
		}
		if d := f.Delay; d != nil {
			if _, err := ParseDuration(d.Fixed); err != nil {
				return fmt.Errorf("spec.fault.delay.fixed: %w", err)
			}
			if d.Percent < 0 || d.Percent > 100 {
				return fmt.Errorf("spec.fault.delay.percent: %d is outside 0..100", d.Percent)
			}
		}
		if a := f.Abort; a != nil {
			if _, ok := Codes[a.Code]; !ok {
				return fmt.Errorf("spec.fault.abort.code: %q is not a gRPC status code name other than OK (e.g. Unavailable)", a.Code)
			}
			if a.Percent < 0 || a.Percent > 100 {
				return fmt.Errorf("spec.fault.abort.percent: %d is outside 0..100", a.Percent)
			}
		}
	}
	return nil
}

// headerName is a gRPC metadata key as the CRD admits it.
var headerName = regexp.MustCompile(`^[0-9a-z_.-]{1,253}$`)
