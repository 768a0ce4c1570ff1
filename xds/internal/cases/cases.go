// Package cases holds the translation cases that both sides of Ballast's
// xDS form are tested on: the golden files of package xds, and the round
// trip through package xds/client's decoders.
package cases

import (
	"net/netip"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/policy"
)

// Case is Services and the translation options they are translated with.
type Case struct {
	Name string
	// The xds.Options fields.
	DefaultPolicy                    policy.LB
	ClusterDomain, BareNameNamespace string
	Services                         []*discovery.Service
}

// Endpoint is an endpoint with the given conditions.
func Endpoint(addr string, ready, serving, terminating bool, zone, pod string) discovery.Endpoint {
	return discovery.Endpoint{
		Address: netip.MustParseAddrPort(addr),
		Ready:   ready, Serving: serving, Terminating: terminating,
		Zone: zone, Pod: pod,
	}
}

// Golden are the golden cases: every endpoint condition, zones, several
// ports and protocols, each policy, the options.
func Golden() []Case {
	ep := Endpoint
	return []Case{{
		Name: "default_namespace_zones_and_conditions",
		Services: []*discovery.Service{{
			Key:        discovery.Key{Namespace: "default", Name: "greeter"},
			ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
			Ports: []discovery.Port{{Port: 50051, Protocol: "TCP", Endpoints: []discovery.Endpoint{
				ep("10.0.0.1:8080", true, true, false, "zone-a", "greeter-1"),
				ep("10.0.0.2:8080", false, true, true, "zone-a", "greeter-2"),   // draining
				ep("10.0.0.3:8080", false, false, true, "zone-b", "greeter-3"),  // gone
				ep("10.0.0.4:8080", false, false, false, "zone-b", "greeter-4"), // not ready yet
				ep("10.0.0.5:8080", true, true, false, "zone-b", "greeter-5"),
				ep("10.0.0.6:8080", true, true, false, "", ""),
			}}},
		}},
	}, {
		Name: "other_namespace_multi_port_least_request",
		Services: []*discovery.Service{{
			Key:         discovery.Key{Namespace: "shop", Name: "cart"},
			Annotations: map[string]string{policy.LBAnnotation: "least_request"},
			Ports: []discovery.Port{
				{Name: "grpc", Port: 9090, Protocol: "TCP", Endpoints: []discovery.Endpoint{ep("10.1.0.1:9090", true, true, false, "z", "cart-1")}},
				{Name: "dns", Port: 9053, Protocol: "UDP", Endpoints: []discovery.Endpoint{ep("10.1.0.1:53", true, true, false, "z", "cart-1")}},
				{Name: "admin", Port: 9901, Protocol: "TCP"},
			},
		}},
	}, {
		Name:          "peak_ewma_and_default_policy_option",
		DefaultPolicy: policy.LeastRequest, ClusterDomain: "example.org", BareNameNamespace: "-",
		Services: []*discovery.Service{{
			Key:         discovery.Key{Namespace: "default", Name: "fast"},
			ClusterIPs:  []netip.Addr{netip.MustParseAddr("fd00:96::1")},
			Annotations: map[string]string{policy.LBAnnotation: "peak_ewma"},
			Ports:       []discovery.Port{{Port: 80, Protocol: "TCP", Endpoints: []discovery.Endpoint{ep("[fd00::1]:8080", true, true, false, "z", "fast-1")}}},
		}, {
			Key:   discovery.Key{Namespace: "default", Name: "plain"},
			Ports: []discovery.Port{{Port: 81, Protocol: "TCP"}},
		}},
	}, {
		// Every field of a route: rule names, :path prefix, exact and
		// regular expression, header exact and regular expression
		// matches, weighted backends (one unresolved), a rule with no
		// backend, request and response header modifiers.
		Name: "grpcroute_matches_weights_filters",
		Services: []*discovery.Service{{
			Key:        discovery.Key{Namespace: "default", Name: "greeter"},
			ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20")},
			Ports:      []discovery.Port{{Port: 50051, Protocol: "TCP", Endpoints: []discovery.Endpoint{ep("10.0.1.1:8080", true, true, false, "z", "greeter-1")}}},
			Routes: []discovery.PortRoute{{Port: 50051, Rules: []discovery.RouteRule{{
				Name: "default/greeter/v2-header",
				Match: policy.Match{
					Path: policy.StringMatch{Type: policy.Exact, Value: "/helloworld.Greeter/SayHello"},
					Headers: []policy.HeaderMatch{
						{Name: "version", Value: policy.StringMatch{Type: policy.Exact, Value: "2"}},
						{Name: "user", Value: policy.StringMatch{Type: policy.RegularExpression, Value: "a.*z"}},
					},
				},
				Backends:        []discovery.RouteBackend{{Service: discovery.Key{Namespace: "default", Name: "greeter-v2"}, Port: 50051, Weight: 1}},
				RequestHeaders:  policy.HeaderModifier{Set: []policy.Header{{Name: "x-set", Value: "1"}}, Add: []policy.Header{{Name: "x-add", Value: "2"}}, Remove: []string{"x-drop"}},
				ResponseHeaders: policy.HeaderModifier{Set: []policy.Header{{Name: "x-served-by", Value: "v2"}}, Remove: []string{"x-internal"}},
			}, {
				Name:     "default/greeter/rules[1]",
				Match:    policy.Match{Path: policy.StringMatch{Type: policy.RegularExpression, Value: "/[^/]+/SayGoodbye"}},
				Backends: []discovery.RouteBackend{{Service: discovery.Key{Namespace: "default", Name: "greeter"}, Port: 50051, Weight: 5}},
			}, {
				Name:  "default/greeter/canary",
				Match: policy.Match{Path: policy.StringMatch{Type: policy.Prefix, Value: "/helloworld.Greeter/"}},
				Backends: []discovery.RouteBackend{
					{Service: discovery.Key{Namespace: "default", Name: "greeter"}, Port: 50051, Weight: 90},
					{Service: discovery.Key{Namespace: "default", Name: "greeter-v2"}, Port: 50051, Weight: 9},
					{Service: discovery.Key{Namespace: "default", Name: "greeter-v3"}, Port: 50051, Weight: 1, Unresolved: "Service default/greeter-v3 does not exist"},
				},
			}, {
				Name:  "default/greeter/drain",
				Match: policy.Match{Path: policy.StringMatch{Type: policy.Prefix, Value: "/"}},
			}}}},
		}},
	}, {
		// TrafficPolicies: a Service's on its port without a route
		// (timeout, retries with the defaults), and on a routed port a
		// rule's own (per-try timeout, backoff, a budget, a code gRPC's
		// clients do not retry on), a per-try timeout alone, and none.
		Name: "trafficpolicy_timeouts_retries",
		Services: []*discovery.Service{{
			Key:        discovery.Key{Namespace: "default", Name: "slow"},
			ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.30")},
			Ports: []discovery.Port{
				{Port: 50051, Protocol: "TCP", Endpoints: []discovery.Endpoint{ep("10.0.2.1:8080", true, true, false, "z", "slow-1")}},
				{Port: 50052, Protocol: "TCP", Endpoints: []discovery.Endpoint{ep("10.0.2.1:8081", true, true, false, "z", "slow-1")}},
			},
			Call: policy.CallPolicy{Timeout: time.Second, Retry: &policy.Retry{Codes: []codes.Code{codes.Unavailable}, Attempts: 1}},
			Routes: []discovery.PortRoute{{Port: 50052, Rules: []discovery.RouteRule{{
				Name:     "default/slow/hello",
				Match:    policy.Match{Path: policy.StringMatch{Type: policy.Exact, Value: "/helloworld.Greeter/SayHello"}},
				Backends: []discovery.RouteBackend{{Service: discovery.Key{Namespace: "default", Name: "slow"}, Port: 50052, Weight: 1}},
				Call: policy.CallPolicy{Timeout: 200 * time.Millisecond, TryTimeout: 50 * time.Millisecond, Retry: &policy.Retry{
					Codes: []codes.Code{codes.Aborted, codes.Unavailable}, Attempts: 3, Backoff: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond,
					Budget: &policy.RetryBudget{Percent: 20, Interval: 10 * time.Second, MinRetries: 3},
				}},
			}, {
				Name:     "default/slow/try",
				Match:    policy.Match{Path: policy.StringMatch{Type: policy.Prefix, Value: "/helloworld.Greeter/"}},
				Backends: []discovery.RouteBackend{{Service: discovery.Key{Namespace: "default", Name: "slow"}, Port: 50052, Weight: 1}},
				Call:     policy.CallPolicy{TryTimeout: 300 * time.Millisecond},
			}, {
				Name:     "default/slow/rest",
				Match:    policy.Match{Path: policy.StringMatch{Type: policy.Prefix, Value: "/"}},
				Backends: []discovery.RouteBackend{{Service: discovery.Key{Namespace: "default", Name: "slow"}, Port: 50052, Weight: 1}},
			}}}},
		}},
	}, {
		// TrafficPolicy loadBalancer, rateLimit and fault: a Service's
		// ring_hash on a header (over its annotation) with a rate limit and
		// a fault on its port without a route; on a routed port a rule's
		// own limit and abort, and a rule with none (whose listener still
		// lists the fault filter, as the port's route has a fault). A
		// ring_hash Service without a hash header, by annotation.
		Name: "trafficpolicy_lb_ratelimit_fault",
		Services: []*discovery.Service{{
			Key:         discovery.Key{Namespace: "default", Name: "sticky"},
			ClusterIPs:  []netip.Addr{netip.MustParseAddr("10.96.0.40")},
			Annotations: map[string]string{policy.LBAnnotation: "least_request"},
			Ports: []discovery.Port{
				{Port: 50051, Protocol: "TCP", Endpoints: []discovery.Endpoint{ep("10.0.3.1:8080", true, true, false, "z", "sticky-1")}},
				{Port: 50052, Protocol: "TCP", Endpoints: []discovery.Endpoint{ep("10.0.3.1:8081", true, true, false, "z", "sticky-1")}},
			},
			Balancing: &policy.Cluster{LB: policy.RingHash, HashHeader: "x-user"},
			Call: policy.CallPolicy{
				RateLimit: &policy.RateLimit{RequestsPerSecond: 100, Burst: 10, Bucket: "Service default/sticky"},
				Fault:     &policy.Fault{Delay: 20 * time.Millisecond, DelayPercent: 5, AbortCode: codes.Unavailable, AbortPercent: 10},
			},
			Routes: []discovery.PortRoute{{Port: 50052, Rules: []discovery.RouteRule{{
				Name:     "default/sticky/hello",
				Match:    policy.Match{Path: policy.StringMatch{Type: policy.Exact, Value: "/helloworld.Greeter/SayHello"}},
				Backends: []discovery.RouteBackend{{Service: discovery.Key{Namespace: "default", Name: "sticky"}, Port: 50052, Weight: 1}},
				Call: policy.CallPolicy{
					RateLimit: &policy.RateLimit{RequestsPerSecond: 5, Burst: 1, Bucket: "GRPCRoute default/sticky rule hello"},
					Fault:     &policy.Fault{AbortCode: codes.ResourceExhausted, AbortPercent: 50},
				},
			}, {
				Name:     "default/sticky/rest",
				Match:    policy.Match{Path: policy.StringMatch{Type: policy.Prefix, Value: "/"}},
				Backends: []discovery.RouteBackend{{Service: discovery.Key{Namespace: "default", Name: "sticky"}, Port: 50052, Weight: 1}},
			}}}},
		}, {
			Key:         discovery.Key{Namespace: "default", Name: "hashed"},
			Annotations: map[string]string{policy.LBAnnotation: "ring_hash"},
			Ports:       []discovery.Port{{Port: 50051, Protocol: "TCP", Endpoints: []discovery.Endpoint{ep("10.0.3.2:8080", true, true, false, "z", "hashed-1")}}},
		}},
	}, {
		// A TrafficPolicy's circuit breaker and outlier detection on a
		// Service: every bound and both A50 algorithms plus consecutive
		// errors on one; on another, maxRequests alone and failure
		// percentage alone; a third with none sends max_requests all the
		// same (no bound: gRPC's clients would apply 1024).
		Name: "trafficpolicy_circuit_breaker_outlier_detection",
		Services: []*discovery.Service{{
			Key:   discovery.Key{Namespace: "default", Name: "guarded"},
			Ports: []discovery.Port{{Port: 50051, Protocol: "TCP", Endpoints: []discovery.Endpoint{ep("10.0.3.1:8080", true, true, false, "", "guarded-1")}}},
			Cluster: policy.Cluster{
				CircuitBreaker: policy.CircuitBreaker{MaxRequests: 100, MaxPendingRequests: 10, MaxConnections: 4},
				Outlier: &policy.OutlierDetection{
					Interval: time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second, MaxEjectionPercent: 50,
					ConsecutiveErrors: 5,
					SuccessRate:       &policy.SuccessRateEjection{StdevFactor: 1900, EnforcementPercentage: 100, MinimumHosts: 5, RequestVolume: 100},
					FailurePercentage: &policy.FailurePercentageEjection{Threshold: 85, EnforcementPercentage: 100, MinimumHosts: 5, RequestVolume: 50},
				},
			},
		}, {
			Key:   discovery.Key{Namespace: "default", Name: "ejecting"},
			Ports: []discovery.Port{{Port: 50051, Protocol: "TCP", Endpoints: []discovery.Endpoint{ep("10.0.3.2:8080", true, true, false, "", "ejecting-1")}}},
			Cluster: policy.Cluster{
				CircuitBreaker: policy.CircuitBreaker{MaxRequests: 1},
				Outlier: &policy.OutlierDetection{
					Interval: 500 * time.Millisecond, BaseEjectionTime: 2 * time.Second, MaxEjectionTime: 2 * time.Second, MaxEjectionPercent: 100,
					FailurePercentage: &policy.FailurePercentageEjection{Threshold: 50, EnforcementPercentage: 100, MinimumHosts: 1, RequestVolume: 10},
				},
			},
		}, {
			Key:   discovery.Key{Namespace: "default", Name: "unguarded"},
			Ports: []discovery.Port{{Port: 50051, Protocol: "TCP", Endpoints: []discovery.Endpoint{ep("10.0.3.3:8080", true, true, false, "", "unguarded-1")}}},
		}},
	}}
}
