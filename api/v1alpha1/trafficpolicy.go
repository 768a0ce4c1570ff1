package v1alpha1

import (
	"fmt"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// GroupVersion is the API group and version of the types in this package.
var GroupVersion = schema.GroupVersion{Group: "ballast.dev", Version: "v1alpha1"}

// AddToScheme registers TrafficPolicy and TrafficPolicyList with a scheme.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &TrafficPolicy{}, &TrafficPolicyList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}

// TrafficPolicy sets timeouts and retries for the calls to its targets: a Service (every call to it) or a
// GRPCRoute rule named by sectionName (the calls that rule matches). Two policies on one target: the older
// wins (GEP-713).
type TrafficPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   TrafficPolicySpec      `json:"spec"`
	Status gatewayv1.PolicyStatus `json:"status,omitempty"`
}

// TrafficPolicyList is a list of TrafficPolicy.
type TrafficPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []TrafficPolicy `json:"items"`
}

// TrafficPolicySpec is what a TrafficPolicy asks for. Each field is optional: an absent one leaves that
// behaviour as it is without the policy. Load balancing, circuit breaking, outlier detection, rate limits
// and fault injection slot in here as further optional fields.
type TrafficPolicySpec struct {
	// TargetRefs are the Services and GRPCRoute rules the policy applies to (same namespace).
	TargetRefs []gatewayv1.LocalPolicyTargetReferenceWithSectionName `json:"targetRefs"`

	Timeouts *Timeouts `json:"timeouts,omitempty"`
	Retry    *Retry    `json:"retry,omitempty"`

	// CircuitBreaker and OutlierDetection apply to a Service's backends
	// (cluster.go): only a policy on a Service sets them.
	CircuitBreaker   *CircuitBreaker   `json:"circuitBreaker,omitempty"`
	OutlierDetection *OutlierDetection `json:"outlierDetection,omitempty"`

	// LoadBalancer picks the balancing policy of a Service target's calls;
	// it wins over the Service's ballast.dev/lb-policy annotation. Only
	// Service targets take it: a GRPCRoute rule's calls are balanced by
	// their backend Services' policies.
	LoadBalancer *LoadBalancer `json:"loadBalancer,omitempty"`
	// RateLimit bounds the calls each client makes to the target: all the
	// calls to a Service or GRPCRoute share one bucket, a GRPCRoute rule's
	// (one method, typically) its own.
	RateLimit *RateLimit `json:"rateLimit,omitempty"`
	// Fault delays or fails a share of the target's calls, to test how
	// their callers cope.
	Fault *Fault `json:"fault,omitempty"`
}

// Timeouts has HTTPRouteTimeouts' shape.
type Timeouts struct {
	// Request bounds the whole call, retries included.
	Request *gatewayv1.Duration `json:"request,omitempty"`
	// BackendRequest bounds one try.
	BackendRequest *gatewayv1.Duration `json:"backendRequest,omitempty"`
}

// Retry says which failed calls are tried again and how often.
type Retry struct {
	// Codes are gRPC status code names (Unavailable, DeadlineExceeded, ...) that make a call retried.
	Codes []string `json:"codes,omitempty"`
	// Attempts is the number of retries after the first try.
	Attempts *int32 `json:"attempts,omitempty"`
	// Backoff is the base interval between tries.
	Backoff *gatewayv1.Duration `json:"backoff,omitempty"`
	// Budget bounds retries to a share of the calls, so that retries cannot multiply the load of a
	// failing backend (XBackendTrafficPolicy's RetryConstraint).
	Budget *RetryBudget `json:"budget,omitempty"`
}

// RetryBudget has Gateway API's RetryConstraint shape: over each Interval, retries may be at most
// Percent of the calls, but MinRetryRate's retries are always allowed.
type RetryBudget struct {
	// Percent of the calls that may be retries, 0..100; 20 when absent.
	Percent *int32 `json:"percent,omitempty"`
	// Interval is the window the percentage is counted over; 10s when absent.
	Interval *gatewayv1.Duration `json:"interval,omitempty"`
	// MinRetryRate is the retries allowed whatever the percentage.
	MinRetryRate *RequestRate `json:"minRetryRate,omitempty"`
}

// RequestRate is Count requests per Interval.
type RequestRate struct {
	Count    *int32              `json:"count,omitempty"`
	Interval *gatewayv1.Duration `json:"interval,omitempty"`
}

// Codes maps gRPC status code names, as the gRPC spec spells them in CamelCase, to their numbers.
var Codes = map[string]uint32{
	"Canceled": 1, "Unknown": 2, "InvalidArgument": 3, "DeadlineExceeded": 4, "NotFound": 5,
	"AlreadyExists": 6, "PermissionDenied": 7, "ResourceExhausted": 8, "FailedPrecondition": 9,
	"Aborted": 10, "OutOfRange": 11, "Unimplemented": 12, "Internal": 13, "Unavailable": 14,
	"DataLoss": 15, "Unauthenticated": 16,
}

// ParseDuration parses a Gateway API Duration (GEP-2257): one to four groups of up to five digits, each
// followed by h, m, s or ms. Go's time.ParseDuration accepts more (fractions, ns, us), which the CRD rejects,
// so --files rejects it too.
func ParseDuration(d gatewayv1.Duration) (time.Duration, error) {
	s := string(d)
	if s == "" {
		return 0, fmt.Errorf("empty duration")
	}
	rest, groups := s, 0
	for rest != "" {
		i := 0
		for i < len(rest) && i < 6 && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 0 || i > 5 {
			return 0, fmt.Errorf("duration %q: want up to 5 digits then h, m, s or ms, 1 to 4 times (GEP-2257)", s)
		}
		rest = rest[i:]
		switch {
		case strings.HasPrefix(rest, "ms"):
			rest = rest[2:]
		case strings.HasPrefix(rest, "h"), strings.HasPrefix(rest, "m"), strings.HasPrefix(rest, "s"):
			rest = rest[1:]
		default:
			return 0, fmt.Errorf("duration %q: want up to 5 digits then h, m, s or ms, 1 to 4 times (GEP-2257)", s)
		}
		groups++
	}
	if groups > 4 {
		return 0, fmt.Errorf("duration %q: more than 4 groups (GEP-2257)", s)
	}
	return time.ParseDuration(s)
}

// Validate reports the first thing in the spec the CRD's schema would reject, naming the field.
func (s *TrafficPolicySpec) Validate() error {
	if len(s.TargetRefs) == 0 {
		return fmt.Errorf("spec.targetRefs: at least one target is required")
	}
	for i, r := range s.TargetRefs {
		switch {
		case r.Group == "" && r.Kind == "Service":
		case r.Group == gatewayv1.GroupName && r.Kind == "GRPCRoute":
		default:
			return fmt.Errorf("spec.targetRefs[%d]: group %q kind %q: want core Service or %s GRPCRoute", i, r.Group, r.Kind, gatewayv1.GroupName)
		}
		if r.Name == "" {
			return fmt.Errorf("spec.targetRefs[%d].name: required", i)
		}
		if r.Kind == "Service" && r.SectionName != nil {
			return fmt.Errorf("spec.targetRefs[%d].sectionName: a Service target takes no sectionName", i)
		}
	}
	if t := s.Timeouts; t != nil {
		var req, try time.Duration
		var err error
		if t.Request != nil {
			if req, err = ParseDuration(*t.Request); err != nil {
				return fmt.Errorf("spec.timeouts.request: %w", err)
			}
		}
		if t.BackendRequest != nil {
			if try, err = ParseDuration(*t.BackendRequest); err != nil {
				return fmt.Errorf("spec.timeouts.backendRequest: %w", err)
			}
		}
		if req > 0 && try > req {
			return fmt.Errorf("spec.timeouts.backendRequest %s exceeds request %s", try, req)
		}
	}
	if r := s.Retry; r != nil {
		for i, c := range r.Codes {
			if _, ok := Codes[c]; !ok {
				return fmt.Errorf("spec.retry.codes[%d]: %q is not a gRPC status code name (e.g. Unavailable)", i, c)
			}
		}
		if r.Attempts != nil && (*r.Attempts < 0 || *r.Attempts > 10) {
			return fmt.Errorf("spec.retry.attempts: %d is outside 0..10", *r.Attempts)
		}
		if r.Backoff != nil {
			if _, err := ParseDuration(*r.Backoff); err != nil {
				return fmt.Errorf("spec.retry.backoff: %w", err)
			}
		}
		if b := r.Budget; b != nil {
			if b.Percent != nil && (*b.Percent < 0 || *b.Percent > 100) {
				return fmt.Errorf("spec.retry.budget.percent: %d is outside 0..100", *b.Percent)
			}
			if b.Interval != nil {
				if d, err := ParseDuration(*b.Interval); err != nil {
					return fmt.Errorf("spec.retry.budget.interval: %w", err)
				} else if d < time.Second {
					return fmt.Errorf("spec.retry.budget.interval: %s is under 1s", d)
				}
			}
			if m := b.MinRetryRate; m != nil {
				if m.Count != nil && *m.Count < 0 {
					return fmt.Errorf("spec.retry.budget.minRetryRate.count: %d is negative", *m.Count)
				}
				if m.Interval != nil {
					if d, err := ParseDuration(*m.Interval); err != nil {
						return fmt.Errorf("spec.retry.budget.minRetryRate.interval: %w", err)
					} else if d <= 0 {
						return fmt.Errorf("spec.retry.budget.minRetryRate.interval: must be above 0")
					}
				}
			}
		}
	}
	if c := s.CircuitBreaker; c != nil {
		if err := c.validate(); err != nil {
			return err
		}
	}
	if o := s.OutlierDetection; o != nil {
		if err := o.validate(); err != nil {
			return err
		}
	}
	return s.validateDataplane()
}
