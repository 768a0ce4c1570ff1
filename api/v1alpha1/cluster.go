package v1alpha1

import (
	"fmt"
	"time"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// The fields of a TrafficPolicy that shape how a Service's endpoints are
// used rather than one call: they apply to the Service's backends (xDS
// Clusters), so only a policy on a Service sets them; on a GRPCRoute
// target they are ignored, and its status says so.

// CircuitBreaker bounds what the clients of a Service may ask of it at
// once (xDS: Cluster.circuit_breakers). Each bound is per client (per
// channel, per sidecar), as in Envoy and gRPC.
type CircuitBreaker struct {
	// MaxRequests is the calls in flight at once; a call beyond it fails
	// at once with UNAVAILABLE. No limit when absent.
	MaxRequests *int32 `json:"maxRequests,omitempty"`
	// MaxPendingRequests is the calls waiting at once for a connection
	// able to take them; a call beyond it fails at once with UNAVAILABLE.
	// No limit when absent.
	MaxPendingRequests *int32 `json:"maxPendingRequests,omitempty"`
	// MaxConnections is the connections open at once to the Service's
	// endpoints. No limit when absent.
	MaxConnections *int32 `json:"maxConnections,omitempty"`
}

// OutlierDetection ejects the endpoints that fail more than their peers
// from balancing for a while (gRFC A50, plus consecutive errors). Ejection
// runs when at least one of successRateEjection, failurePercentageEjection
// and consecutiveErrors is set; the others tune it.
type OutlierDetection struct {
	// Interval is how often ejection is decided; 10s when absent.
	Interval *gatewayv1.Duration `json:"interval,omitempty"`
	// BaseEjectionTime is how long an endpoint is ejected the first time,
	// multiplied by the times in a row it is ejected; 30s when absent.
	BaseEjectionTime *gatewayv1.Duration `json:"baseEjectionTime,omitempty"`
	// MaxEjectionTime caps the ejection time; 300s (or the base ejection
	// time, if longer) when absent.
	MaxEjectionTime *gatewayv1.Duration `json:"maxEjectionTime,omitempty"`
	// MaxEjectionPercent is the most of the endpoints ejected at once,
	// 0..100; 10 when absent. At least one endpoint may be ejected.
	MaxEjectionPercent *int32 `json:"maxEjectionPercent,omitempty"`
	// ConsecutiveErrors ejects an endpoint whose calls failed this many
	// times in a row, at once, without waiting for the interval.
	ConsecutiveErrors *int32 `json:"consecutiveErrors,omitempty"`
	// SuccessRateEjection ejects the endpoints whose success rate is far
	// below the mean of their peers'.
	SuccessRateEjection *SuccessRateEjection `json:"successRateEjection,omitempty"`
	// FailurePercentageEjection ejects the endpoints whose share of failed
	// calls is above a threshold.
	FailurePercentageEjection *FailurePercentageEjection `json:"failurePercentageEjection,omitempty"`
}

// SuccessRateEjection is gRFC A50's success_rate_ejection: an endpoint is
// ejected when its success rate is below mean - stdev × stdevFactor/1000
// of the rates of the endpoints with at least requestVolume calls in the
// interval, if at least minimumHosts have.
type SuccessRateEjection struct {
	// StdevFactor, in thousandths; 1900 when absent.
	StdevFactor *int32 `json:"stdevFactor,omitempty"`
	// EnforcementPercentage is the chance, 0..100, that an endpoint found
	// an outlier is ejected; 100 when absent.
	EnforcementPercentage *int32 `json:"enforcementPercentage,omitempty"`
	// MinimumHosts; 5 when absent.
	MinimumHosts *int32 `json:"minimumHosts,omitempty"`
	// RequestVolume; 100 when absent.
	RequestVolume *int32 `json:"requestVolume,omitempty"`
}

// FailurePercentageEjection is gRFC A50's failure_percentage_ejection: an
// endpoint with at least requestVolume calls in the interval is ejected
// when more than threshold percent of them failed, if at least
// minimumHosts endpoints have that many calls.
type FailurePercentageEjection struct {
	// Threshold, 0..100; 85 when absent.
	Threshold *int32 `json:"threshold,omitempty"`
	// EnforcementPercentage, 0..100; 100 when absent.
	EnforcementPercentage *int32 `json:"enforcementPercentage,omitempty"`
	// MinimumHosts; 5 when absent.
	MinimumHosts *int32 `json:"minimumHosts,omitempty"`
	// RequestVolume; 50 when absent.
	RequestVolume *int32 `json:"requestVolume,omitempty"`
}

func (c *CircuitBreaker) validate() error {
	for _, f := range []struct {
		name string
		v    *int32
	}{{"maxRequests", c.MaxRequests}, {"maxPendingRequests", c.MaxPendingRequests}, {"maxConnections", c.MaxConnections}} {
		if f.v != nil && *f.v < 1 {
			return fmt.Errorf("spec.circuitBreaker.%s: %d is under 1", f.name, *f.v)
		}
	}
	return nil
}

func (o *OutlierDetection) validate() error {
	positive := func(name string, d *gatewayv1.Duration) (time.Duration, error) {
		if d == nil {
			return 0, nil
		}
		v, err := ParseDuration(*d)
		if err != nil {
			return 0, fmt.Errorf("spec.outlierDetection.%s: %w", name, err)
		}
		if v <= 0 {
			return 0, fmt.Errorf("spec.outlierDetection.%s: must be above 0", name)
		}
		return v, nil
	}
	if _, err := positive("interval", o.Interval); err != nil {
		return err
	}
	base, err := positive("baseEjectionTime", o.BaseEjectionTime)
	if err != nil {
		return err
	}
	maxTime, err := positive("maxEjectionTime", o.MaxEjectionTime)
	if err != nil {
		return err
	}
	if base > 0 && maxTime > 0 && maxTime < base {
		return fmt.Errorf("spec.outlierDetection.maxEjectionTime %s is under baseEjectionTime %s", maxTime, base)
	}
	percent := func(name string, v *int32) error {
		if v != nil && (*v < 0 || *v > 100) {
			return fmt.Errorf("spec.outlierDetection.%s: %d is outside 0..100", name, *v)
		}
		return nil
	}
	atLeast := func(name string, v *int32, min int32) error {
		if v != nil && *v < min {
			return fmt.Errorf("spec.outlierDetection.%s: %d is under %d", name, *v, min)
		}
		return nil
	}
	if err := percent("maxEjectionPercent", o.MaxEjectionPercent); err != nil {
		return err
	}
	if err := atLeast("consecutiveErrors", o.ConsecutiveErrors, 1); err != nil {
		return err
	}
	if s := o.SuccessRateEjection; s != nil {
		if err := atLeast("successRateEjection.stdevFactor", s.StdevFactor, 0); err != nil {
			return err
		}
		if err := percent("successRateEjection.enforcementPercentage", s.EnforcementPercentage); err != nil {
			return err
		}
		if err := atLeast("successRateEjection.minimumHosts", s.MinimumHosts, 0); err != nil {
			return err
		}
		if err := atLeast("successRateEjection.requestVolume", s.RequestVolume, 0); err != nil {
			return err
		}
	}
	if f := o.FailurePercentageEjection; f != nil {
		if err := percent("failurePercentageEjection.threshold", f.Threshold); err != nil {
			return err
		}
		if err := percent("failurePercentageEjection.enforcementPercentage", f.EnforcementPercentage); err != nil {
			return err
		}
		if err := atLeast("failurePercentageEjection.minimumHosts", f.MinimumHosts, 0); err != nil {
			return err
		}
		if err := atLeast("failurePercentageEjection.requestVolume", f.RequestVolume, 0); err != nil {
			return err
		}
	}
	return nil
}

// DeepCopy returns a copy of c.
func (c *CircuitBreaker) DeepCopy() *CircuitBreaker {
	if c == nil {
		return nil
	}
	return &CircuitBreaker{MaxRequests: copyInt(c.MaxRequests), MaxPendingRequests: copyInt(c.MaxPendingRequests), MaxConnections: copyInt(c.MaxConnections)}
}

// DeepCopy returns a copy of o.
func (o *OutlierDetection) DeepCopy() *OutlierDetection {
	if o == nil {
		return nil
	}
	out := &OutlierDetection{
		Interval:           copyDuration(o.Interval),
		BaseEjectionTime:   copyDuration(o.BaseEjectionTime),
		MaxEjectionTime:    copyDuration(o.MaxEjectionTime),
		MaxEjectionPercent: copyInt(o.MaxEjectionPercent),
		ConsecutiveErrors:  copyInt(o.ConsecutiveErrors),
	}
	if s := o.SuccessRateEjection; s != nil {
		out.SuccessRateEjection = &SuccessRateEjection{StdevFactor: copyInt(s.StdevFactor), EnforcementPercentage: copyInt(s.EnforcementPercentage),
			MinimumHosts: copyInt(s.MinimumHosts), RequestVolume: copyInt(s.RequestVolume)}
	}
	if f := o.FailurePercentageEjection; f != nil {
		out.FailurePercentageEjection = &FailurePercentageEjection{Threshold: copyInt(f.Threshold), EnforcementPercentage: copyInt(f.EnforcementPercentage),
			MinimumHosts: copyInt(f.MinimumHosts), RequestVolume: copyInt(f.RequestVolume)}
	}
	return out
}
