package policy

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/ballast-dev/ballast/discovery"
)

// Defaults are what a Service asks for where it says nothing itself.
type Defaults struct {
	// LB is the policy of Services without the lb-policy annotation; empty
	// means RoundRobin.
	LB LB
}

// ServiceLB is the policy svc asks for: its annotation's, else d's. ok is
// false when svc has no annotation; err names the Service, the annotation
// and the bad value.
func ServiceLB(svc *discovery.Service, d Defaults) (p LB, ok bool, err error) {
	v, ok := svc.Annotations[LBAnnotation]
	if !ok {
		if d.LB == "" {
			return RoundRobin, false, nil
		}
		if _, err := ParseLB(string(d.LB)); err != nil {
			return "", false, fmt.Errorf("service %s: %w", svc.Key, err)
		}
		return d.LB, false, nil
	}
	p, err = ParseLB(v)
	if err != nil {
		return "", true, fmt.Errorf("service %s: annotation %s: %w", svc.Key, LBAnnotation, err)
	}
	return p, true, nil
}

// ClusterOf is the Cluster, named name, of a port of svc.
func ClusterOf(svc *discovery.Service, name string, d Defaults) (Cluster, error) {
	lb, _, err := ServiceLB(svc, d)
	if err != nil {
		return Cluster{}, err
	}
	return Cluster{Name: name, LB: lb}, nil
}

// RouteTo is the Route of a Service port that has no routing rules of its
// own: every call goes to the port's Cluster.
func RouteTo(name string, domains []string, cluster string) Route {
	return Route{
		Name:    name,
		Domains: domains,
		Rules:   []Rule{{Match: Match{PathPrefix: "/"}, Backends: []Backend{{Cluster: cluster, Weight: 1}}}},
	}
}

// EndpointsOf are the endpoints of a Service port as clients get them:
// ready ones Healthy, terminating ones that still serve Draining (they
// finish their calls but take no new ones), the rest left out; grouped by
// zone, in zone order, as xDS carries them (one locality per zone).
func EndpointsOf(cluster string, eps []discovery.Endpoint) Endpoints {
	out := Endpoints{Cluster: cluster}
	for _, e := range eps {
		var h Health
		switch {
		case e.Ready:
			h = Healthy
		case e.Serving && e.Terminating:
			h = Draining
		default:
			continue
		}
		out.Endpoints = append(out.Endpoints, Endpoint{Address: e.Address, Zone: e.Zone, Pod: e.Pod, Health: h})
	}
	slices.SortStableFunc(out.Endpoints, func(a, b Endpoint) int { return cmp.Compare(a.Zone, b.Zone) })
	return out
}
