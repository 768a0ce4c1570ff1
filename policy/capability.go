package policy

import (
	"strings"

	"google.golang.org/grpc/codes"
)

// Mode is one of the ways a client gets per-call balancing.
type Mode string

// The modes, as the README names them.
const (
	// Proxyless is a gRPC client's own xDS support (xds:///), fed by
	// `ballast control`.
	Proxyless Mode = "proxyless"
	// Sidecar is ballast-proxy beside an unchanged client.
	Sidecar Mode = "sidecar"
	// Library is the kubernetes:/// resolver and its balancers (Go).
	Library Mode = "library"
)

// Modes lists every mode.
var Modes = []Mode{Proxyless, Sidecar, Library}

// Feature is something a route or policy asks of clients that a mode may
// or may not be able to do.
type Feature string

// The features whose support differs by mode.
const (
	RequestHeaderModifier  Feature = "RequestHeaderModifier"
	ResponseHeaderModifier Feature = "ResponseHeaderModifier"
	// PerTryTimeout is a TrafficPolicy's timeouts.backendRequest.
	PerTryTimeout Feature = "PerTryTimeout"
	// BudgetedRetry is a TrafficPolicy's retry.budget.
	BudgetedRetry Feature = "RetryBudget"
	// RetryCodes are retry.codes other than the five gRPC's xDS clients
	// retry on (ProxylessRetryCodes).
	RetryCodes Feature = "RetryCodes"
	// RateLimited is a TrafficPolicy's rateLimit.
	RateLimited Feature = "RateLimit"
	// MaxRequests, MaxPendingRequests and MaxConnections are a
	// TrafficPolicy's circuitBreaker fields; every mode honours
	// maxRequests, the sidecar maxPendingRequests too.
	MaxRequests        Feature = "CircuitBreakerMaxRequests"
	MaxPendingRequests Feature = "CircuitBreakerMaxPendingRequests"
	MaxConnections     Feature = "CircuitBreakerMaxConnections"
	// SuccessRateFeature, FailurePercentageFeature and
	// ConsecutiveErrors are a TrafficPolicy's outlierDetection
	// algorithms; every mode honours the first two (grpc-go's outlier
	// detection balancer in proxyless clients, balancer/ejection in the
	// sidecar and the library).
	SuccessRateFeature       Feature = "OutlierSuccessRateEjection"
	FailurePercentageFeature Feature = "OutlierFailurePercentageEjection"
	ConsecutiveErrors        Feature = "OutlierConsecutiveErrors"
	// SessionAffinity is an XBackendTrafficPolicy's sessionPersistence.
	SessionAffinity Feature = "SessionPersistence"
)

// ProxylessRetryCodes are the codes a route's retry_on can name to gRPC's
// xDS clients (gRFC A44): grpc-go's decoder reads these five and ignores
// any other name.
var ProxylessRetryCodes = []codes.Code{codes.Canceled, codes.DeadlineExceeded, codes.Internal, codes.ResourceExhausted, codes.Unavailable}

// Capability says which modes honour a Feature and why the others cannot.
type Capability struct {
	Feature  Feature
	Honoured []Mode
	// Why the modes not in Honoured cannot honour it.
	Why string
}

// Capabilities is the table of what each mode cannot do: route status
// conditions and docs/languages.md read it, so both say the same. A
// feature not listed is honoured by every mode.
var Capabilities = []Capability{{
	Feature:  RequestHeaderModifier,
	Honoured: []Mode{Sidecar, Library},
	Why:      "gRPC's proxyless xDS clients (grpc-go among them) do not apply a route's request_headers_to_add/remove",
}, {
	Feature:  ResponseHeaderModifier,
	Honoured: []Mode{Sidecar, Library},
	Why:      "gRPC's proxyless xDS clients (grpc-go among them) do not apply a route's response_headers_to_add/remove",
}, {
	Feature:  PerTryTimeout,
	Honoured: []Mode{Sidecar, Library},
	Why:      "gRPC's xDS clients (gRFC A44, grpc-go among them) do not read a route's retry_policy.per_try_timeout: the call's timeout bounds every try",
}, {
	Feature:  BudgetedRetry,
	Honoured: []Mode{Sidecar, Library},
	Why:      "gRPC's xDS clients have no retry budget (grpc-go's retry throttling is per channel and comes only from a service config's retryThrottling)",
}, {
	Feature:  RetryCodes,
	Honoured: []Mode{Sidecar, Library},
	Why:      "gRPC's xDS clients retry only on cancelled, deadline-exceeded, internal, resource-exhausted and unavailable (a route's retry_on); other codes are not retried",
}, {
	Feature:  RateLimited,
	Honoured: []Mode{Sidecar, Library},
	Why:      "gRPC's xDS clients have no rate limiting of their own calls (grpc-go ignores Envoy's local_ratelimit filter and route metadata)",
}, {
	Feature:  MaxPendingRequests,
	Honoured: []Mode{Sidecar},
	Why:      "gRPC's xDS clients read only max_requests of a Cluster's circuit_breakers, and the Go library's calls wait for a connection inside grpc-go's channel, out of a balancer's sight (the sidecar parks them itself and bounds them)",
}, {
	Feature:  MaxConnections,
	Honoured: []Mode{},
	Why:      "every mode opens one HTTP/2 connection per endpoint and multiplexes calls on it; a bound below the endpoints would mean using only some of them (subsetting), which no mode does",
}, {
	Feature:  ConsecutiveErrors,
	Honoured: []Mode{Sidecar, Library},
	Why:      "gRPC's outlier detection (gRFC A50) has no consecutive-error ejection: grpc-go's xDS clients ignore a Cluster's consecutive_5xx",
}, {
	Feature:  SessionAffinity,
	Honoured: []Mode{},
	Why:      "every mode balances each call on its own, with no session a server issues (a cookie or header it sets) for a client to send back; ring_hash with a hashHeader keeps calls that carry the same header value on one endpoint, but the client sets that value and it has no timeout",
}}

// Unsupported lists the modes that do not honour f, and why; none for a
// feature every mode honours.
func (f Feature) Unsupported() (modes []Mode, why string) {
	for _, c := range Capabilities {
		if c.Feature != f {
			continue
		}
		for _, m := range Modes {
			honoured := false
			for _, h := range c.Honoured {
				honoured = honoured || h == m
			}
			if !honoured {
				modes = append(modes, m)
			}
		}
		return modes, c.Why
	}
	return nil, ""
}

// Notice is a sentence saying which modes do not honour f, for a status
// message; empty when all do.
func (f Feature) Notice(where string) string {
	modes, why := f.Unsupported()
	if len(modes) == 0 {
		return ""
	}
	names := make([]string, len(modes))
	for i, m := range modes {
		names[i] = string(m)
	}
	return where + ": " + string(f) + " is not applied by " + strings.Join(names, ", ") + " clients (" + why + ")"
}
