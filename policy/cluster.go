package policy

import (
	"fmt"
	"math"
	"time"
)

// CircuitBreaker bounds what one client asks of a Cluster at once. A zero
// bound is no bound. (xDS: Cluster.circuit_breakers, the default
// priority's thresholds.)
type CircuitBreaker struct {
	// MaxRequests is the calls in flight at once; a call beyond it fails
	// at once with UNAVAILABLE.
	MaxRequests uint32
	// MaxPendingRequests is the calls waiting at once for a connection
	// to pick. gRPC multiplexes calls on a connection, so a call waits
	// only while the Cluster has no ready connection at all (no endpoint
	// connected yet).
	MaxPendingRequests uint32
	// MaxConnections is the connections open at once. Ballast's clients
	// open one HTTP/2 connection per endpoint, and honouring a lower bound
	// would mean using only some endpoints (subsetting), which none does.
	MaxConnections uint32
}

// NoLimit is the max_requests that means no bound in xDS: gRPC's xDS
// clients apply 1024 to a Cluster without one (gRFC A32), so a Cluster
// whose policy sets none says this instead.
const NoLimit = math.MaxUint32

// OutlierDetection ejects endpoints that fail more than their peers from
// balancing for a while: gRFC A50's success-rate and failure-percentage
// ejection, decided every Interval, and ejection after consecutive
// errors, decided at each failed call. The model holds every field with
// its default applied (package discovery applies them).
type OutlierDetection struct {
	Interval time.Duration
	// An endpoint ejected n times in a row stays out n × BaseEjectionTime,
	// at most max(BaseEjectionTime, MaxEjectionTime).
	BaseEjectionTime, MaxEjectionTime time.Duration
	// MaxEjectionPercent caps the share of endpoints ejected at once.
	MaxEjectionPercent uint32
	// ConsecutiveErrors, if above 0, ejects an endpoint after that many
	// failed calls in a row. (xDS: consecutive_5xx with
	// enforcing_consecutive_5xx 100; gRPC's xDS clients ignore both.)
	ConsecutiveErrors uint32
	// SuccessRate and FailurePercentage, if set, run those algorithms.
	SuccessRate       *SuccessRateEjection
	FailurePercentage *FailurePercentageEjection
}

// SuccessRateEjection is gRFC A50's success_rate_ejection.
type SuccessRateEjection struct {
	// StdevFactor is in thousandths.
	StdevFactor, EnforcementPercentage, MinimumHosts, RequestVolume uint32
}

// FailurePercentageEjection is gRFC A50's failure_percentage_ejection.
type FailurePercentageEjection struct {
	Threshold, EnforcementPercentage, MinimumHosts, RequestVolume uint32
}

// The defaults of gRFC A50 (Envoy's) for the fields a TrafficPolicy or a
// Cluster leaves out.
var (
	DefaultOutlierDetection = OutlierDetection{
		Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second,
		MaxEjectionPercent: 10,
	}
	DefaultSuccessRate       = SuccessRateEjection{StdevFactor: 1900, EnforcementPercentage: 100, MinimumHosts: 5, RequestVolume: 100}
	DefaultFailurePercentage = FailurePercentageEjection{Threshold: 85, EnforcementPercentage: 100, MinimumHosts: 5, RequestVolume: 50}
)

// DefaultMaxRequests is what gRPC's xDS clients bound a Cluster's calls in
// flight to when its circuit_breakers say nothing (gRFC A32).
const DefaultMaxRequests = 1024

// CircuitBreakerOpen is the error message of a call the sidecar or the
// library fails because maxRequests calls are in flight to its Cluster.
func CircuitBreakerOpen(inFlight int64, cluster string, max uint32) string {
	return fmt.Sprintf("ballast: circuit breaker open: %d requests in flight to cluster %s (maxRequests %d)", inFlight, cluster, max)
}
