package policy

import (
	"encoding/json"
	"fmt"
)

// LBAnnotation names the Service annotation that picks the load-balancing
// policy of all of the Service's ports, in every mode: the short form of a
// TrafficPolicy's loadBalancer.
const LBAnnotation = "ballast.dev/lb-policy"

// LB is a load-balancing policy a Service asks its clients to use, by the
// name users write (the annotation, --default-lb-policy, the greeter's
// --lb-policy).
type LB string

// The policies a Service may ask for.
const (
	// RoundRobin spreads calls evenly over the usable endpoints.
	RoundRobin LB = "round_robin"
	// LeastRequest sends each call to the less loaded of two random
	// endpoints (gRFC A48).
	LeastRequest LB = "least_request"
	// PeakEWMA is Ballast's latency-aware policy: the endpoint with the
	// lowest peak-weighted latency times calls in flight.
	PeakEWMA LB = "peak_ewma"
	// RingHash sends the calls with the same hash key (Cluster.HashHeader)
	// to the same endpoint while it is usable (consistent hashing, gRFC
	// A42/A76).
	RingHash LB = "ring_hash"
)

// The grpc-go balancers the policies are made of, by registered name.
const (
	roundRobinBalancer   = "round_robin"
	leastRequestBalancer = "least_request_experimental" // grpc-go's, gRFC A48
	// P2CBalancer is Ballast's least-request balancer (balancer/p2c): the
	// same policy as grpc-go's least_request with two choices, without
	// allocations or locks per pick (its BenchmarkPick runs both).
	P2CBalancer = "ballast_p2c"
	// PeakEWMABalancer is balancer/peakewma.
	PeakEWMABalancer = "ballast_peak_ewma"
	// RingHashBalancer is grpc-go's ring_hash (balancer/ringhash).
	RingHashBalancer = "ring_hash_experimental"
)

// Balancer is one entry of a policy's fallback list: a grpc-go balancer
// name and its JSON config.
type Balancer struct {
	Name   string
	Config json.RawMessage
}

var (
	roundRobinList   = []Balancer{{roundRobinBalancer, json.RawMessage(`{}`)}}
	leastRequestList = append([]Balancer{
		{P2CBalancer, json.RawMessage(`{}`)},
		{leastRequestBalancer, json.RawMessage(`{"choiceCount":2}`)},
	}, roundRobinList...)
	peakEWMAList = append([]Balancer{{PeakEWMABalancer, json.RawMessage(`{}`)}}, leastRequestList...)
	ringHashList = append([]Balancer{{RingHashBalancer, json.RawMessage(`{}`)}}, roundRobinList...)
)

// Balancers is the policy as clients get it: an ordered list of balancers,
// of which a client runs the first it has (gRFC A52 for xDS,
// loadBalancingConfig in a service config). Every list ends with
// round_robin, which every gRPC implementation has; Ballast's own balancers
// come first where they exist, then the standard ones that do the same:
// peak_ewma falls back to least_request, and least_request to grpc's own
// least_request. The returned slice is shared: do not modify it.
func (p LB) Balancers() []Balancer {
	switch p {
	case LeastRequest:
		return leastRequestList
	case PeakEWMA:
		return peakEWMAList
	case RingHash:
		return ringHashList
	default:
		return roundRobinList
	}
}

// LBOf is the policy whose list starts with the balancer named first (the
// first entry of a decoded list); ok is false for a balancer no policy
// starts with.
func LBOf(first string) (p LB, ok bool) {
	switch first {
	case roundRobinBalancer:
		return RoundRobin, true
	case P2CBalancer, leastRequestBalancer:
		return LeastRequest, true
	case PeakEWMABalancer:
		return PeakEWMA, true
	case RingHashBalancer:
		return RingHash, true
	}
	return "", false
}

// ParseLB reads a policy name, as written in the annotation or a flag.
func ParseLB(s string) (LB, error) {
	switch p := LB(s); p {
	case RoundRobin, LeastRequest, PeakEWMA, RingHash:
		return p, nil
	}
	return "", fmt.Errorf("unknown lb policy %q (want %s, %s, %s or %s)", s, RoundRobin, LeastRequest, PeakEWMA, RingHash)
}

// Set implements pflag.Value, so a flag holds a parsed LB.
func (p *LB) Set(s string) error {
	v, err := ParseLB(s)
	if err != nil {
		return err
	}
	*p = v
	return nil
}

func (p *LB) String() string { return string(*p) }

// Type implements pflag.Value.
func (*LB) Type() string { return "policy" }

// Balancers is the Cluster's policy's list (LB.Balancers), with RingHash's
// configured to hash HashHeader (grpc-go's requestHashHeader, gRFC A76).
func (c Cluster) Balancers() []Balancer {
	list := c.LB.Balancers()
	if c.LB != RingHash || c.HashHeader == "" {
		return list
	}
	cfg, err := json.Marshal(map[string]string{"requestHashHeader": c.HashHeader})
	if err != nil {
		panic(fmt.Sprintf("policy: ring hash config: %v", err)) // a string: a bug, not an input
	}
	return append([]Balancer{{RingHashBalancer, cfg}}, list[1:]...)
}
