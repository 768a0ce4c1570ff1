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
type Rule struct {
	Match Match
	// Backends share the matched calls in proportion to their weights.
	Backends []Backend
}

// Match selects calls by their :path. The zero Match selects every call.
type Match struct {
	// PathPrefix, if set, selects the calls whose :path starts with it.
	PathPrefix string
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

// Usable lists the endpoints that take new calls, in order. It is the one
// health filter of every Ballast client.
func (e Endpoints) Usable() []Endpoint {
	out := make([]Endpoint, 0, len(e.Endpoints))
	for _, ep := range e.Endpoints {
		if ep.Health == Healthy {
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
