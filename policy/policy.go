// Package policy is the model of what a Service asks of the clients that
// call it: how each call is routed (Route), how the backend it lands on is
// balanced (Cluster), and which endpoints may take it (Endpoints). It is
// the one vocabulary of Ballast's three modes: the control plane renders it
// as xDS (package xds) for proxyless clients and the sidecar, the sidecar
// reads that xDS back into it (package xds/client), and the kubernetes:///
// resolver renders it as a gRPC service config (ServiceConfig).
//
// A field is encoded once per form and decoded once: the round-trip tests
// of package xds hold the xDS encoder and decoder together.
package policy

import (
	"net/netip"
	"time"

	"google.golang.org/grpc/codes"
)

// Route is how the calls to one Service port are routed: its rules in the
// order a client tries them, the first match wins. (xDS: a
// RouteConfiguration with one virtual host.)
type Route struct {
	// Name names the route; Ballast's control plane names it by the port's
	// fully qualified dial name, name.ns.svc.<domain>:port.
	Name string
	// Domains are the names (host:port) under which clients dial it.
	Domains []string
	Rules   []Rule
}

// Rule is one routing rule: the calls it matches and where they go.
// (xDS: one Route of the virtual host.)
type Rule struct {
	// Name is the rule's name in its source, by which policies attach to
	// it: for a GRPCRoute's rule namespace/route/rule-name
	// (namespace/route/rules[i] for a rule without a name; see
	// discovery.RuleName); empty when it has none.
	Name  string
	Match Match
	// Backends share the matched calls in proportion to their weights.
	// A Backend whose Cluster does not exist fails its share of calls
	// with UNAVAILABLE.
	Backends []Backend
	// RequestHeaders and ResponseHeaders change the headers of the calls
	// the rule matches, on the way to the backend and back.
	RequestHeaders, ResponseHeaders HeaderModifier
	// Call is what the rule's calls ask of the client besides where they
	// go: the TrafficPolicy attached to the rule, or else to the Service
	// the calls are made to.
	Call CallPolicy
}

// CallPolicy is how long a call may take and whether it is tried again.
// The zero CallPolicy asks for nothing: the caller's own deadline, one
// try.
type CallPolicy struct {
	// Timeout bounds the whole call, retries included; 0 leaves the
	// caller's deadline alone. (xDS: the route's max_stream_duration.)
	Timeout time.Duration
	// TryTimeout bounds each try; 0 bounds tries only by Timeout. (xDS:
	// retry_policy.per_try_timeout; grpc-go ignores it.)
	TryTimeout time.Duration
	// Retry, if set, tries failed calls again.
	Retry *Retry
	// RateLimit, if set, bounds how many calls the client makes.
	RateLimit *RateLimit
	// Fault, if set, delays or fails a share of the calls.
	Fault *Fault
}

// RateLimit is a local token bucket: a client lets RequestsPerSecond calls
// a second through, Burst at once, and fails the others with
// RESOURCE_EXHAUSTED without sending them. It counts calls, not tries.
// (xDS: route metadata, see package xds.)
type RateLimit struct {
	RequestsPerSecond int
	Burst             int
	// Bucket names the bucket: the rules whose RateLimit has the same
	// Bucket share one (a TrafficPolicy's target: every rule of a
	// Service's routes shares the Service's).
	Bucket string
}

// Fault delays DelayPercent of the calls by Delay, then fails
// AbortPercent of them with AbortCode, without sending them. (xDS: the
// HTTP fault filter's per-route config.)
type Fault struct {
	Delay        time.Duration
	DelayPercent int
	AbortCode    codes.Code
	AbortPercent int
}

// Retry is which failed calls are tried again, how often and how soon.
type Retry struct {
	// Codes are the gRPC status codes that make a call tried again.
	Codes []codes.Code
	// Attempts is the number of tries after the first.
	Attempts int
	// Backoff is the base of the jittered exponential backoff between
	// tries (gRFC A6: the n-th retry waits a random time up to
	// min(Backoff*2^(n-1), MaxBackoff)); 0 means 25 ms, xDS's default.
	Backoff time.Duration
	// MaxBackoff caps the backoff; 0 means 10 × Backoff, xDS's default.
	MaxBackoff time.Duration
	// Budget, if set, bounds retries as a share of calls, so retries
	// cannot multiply the load of a failing backend.
	Budget *RetryBudget
}

// RetryBudget bounds retries to a share of the calls (Gateway API's
// RetryConstraint): over each Interval, retries may be at most Percent of
// the calls, but MinRetries are always allowed.
type RetryBudget struct {
	Percent    int
	Interval   time.Duration
	MinRetries int
}

// Match selects calls by their :path and headers. The zero Match selects
// every call. A Rule has one Match: a source rule that ORs several
// becomes one Rule per match.
type Match struct {
	// Hostname, if set, selects calls by the host of their :authority
	// (without its port, compared in lower case): a name (foo.example.com)
	// matches itself; a wildcard (*.example.com) matches every name that
	// ends in .example.com with at least one more label. A Gateway
	// listener's and its routes' hostnames select calls by it; a mesh
	// route's rules have none (a Service's route is its own host).
	Hostname string
	// Path, if set, selects calls by :path (/package.Service/Method).
	Path StringMatch
	// Headers all have to match (AND).
	Headers []HeaderMatch
}

// MatchType is how a StringMatch compares.
type MatchType int

const (
	// Prefix matches when the value starts with Value; an empty Prefix
	// matches everything.
	Prefix MatchType = iota
	// Exact matches the whole value.
	Exact
	// RegularExpression matches when the whole value matches Value, in
	// RE2 syntax (gRPC's and Go's regexp).
	RegularExpression
)

// StringMatch is one comparison of a string. The zero StringMatch (an
// empty Prefix) matches every value.
type StringMatch struct {
	Type  MatchType
	Value string
}

// HeaderMatch compares the value of one request header (its name in
// lower case).
type HeaderMatch struct {
	Name  string
	Value StringMatch
}

// HeaderModifier changes a call's headers: Set replaces, Add appends,
// Remove deletes, in that order. Names are lower case.
type HeaderModifier struct {
	Set, Add []Header
	Remove   []string
}

// Header is one header's name and value.
type Header struct {
	Name, Value string
}

// Backend is one destination of a rule's calls.
type Backend struct {
	// Cluster names the Cluster that balances the calls.
	Cluster string
	Weight  uint32
}

// Cluster is what the calls to one backend Service port ask of the
// client's balancer.
type Cluster struct {
	Name string
	LB   LB
	// HashHeader is RingHash's key: the request header whose value picks
	// the endpoint; empty hashes each call at random.
	HashHeader string
	// CircuitBreaker bounds each client's calls and connections to the
	// Cluster (cluster.go).
	CircuitBreaker CircuitBreaker
	// Outlier, if set, ejects failing endpoints for a while.
	Outlier *OutlierDetection
}

// Endpoints are the endpoints a Cluster's calls may be sent to.
type Endpoints struct {
	Cluster   string
	Endpoints []Endpoint
}

// Endpoint is one address that serves a Cluster.
type Endpoint struct {
	Address netip.AddrPort
	// Zone and Pod say where it runs; either may be empty.
	Zone, Pod string
	Health    Health
	// Priority orders endpoints by preference, 0 first (xDS locality
	// priorities): a client uses the lowest priority that has usable
	// endpoints and fails over to the next when they stop answering.
	// Zone preference puts the client's own zone first.
	Priority int
}

// Health is whether an endpoint takes new calls.
type Health int

const (
	// Healthy endpoints take new calls.
	Healthy Health = iota
	// Draining endpoints are terminating: they finish the calls they have
	// but take no new ones.
	Draining
)

func (h Health) String() string {
	if h == Draining {
		return "draining"
	}
	return "healthy"
}

// Usable lists the endpoints that take new calls, in order: the healthy
// ones of the first priority that has any. It is the one health filter of
// every Ballast client.
func (e Endpoints) Usable() []Endpoint {
	first := -1
	for _, ep := range e.Endpoints {
		if ep.Health == Healthy && (first < 0 || ep.Priority < first) {
			first = ep.Priority
		}
	}
	out := make([]Endpoint, 0, len(e.Endpoints))
	for _, ep := range e.Endpoints {
		if ep.Health == Healthy && ep.Priority == first {
			out = append(out, ep)
		}
	}
	return out
}

// Clusters lists the Clusters a Route sends calls to, each once, in the
// order its rules name them.
func (r Route) Clusters() []string {
	var out []string
	seen := map[string]bool{}
	for _, rule := range r.Rules {
		for _, b := range rule.Backends {
			if !seen[b.Cluster] {
				seen[b.Cluster] = true
				out = append(out, b.Cluster)
			}
		}
	}
	return out
}
