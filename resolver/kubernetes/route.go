package kubernetes

import (
	"fmt"
	"net/url"

	"google.golang.org/grpc/resolver"

	"github.com/ballast-dev/ballast/balancer/route"
	"github.com/ballast-dev/ballast/policy"
)

// route is the route of the target's Service port, if it has one.
func (r *kubeResolver) route() (policy.Route, bool) {
	if r.routes == nil {
		return policy.Route{}, false
	}
	svc, ok := r.reg.Get(r.target.key)
	if !ok {
		return policy.Route{}, false
	}
	port, err := svc.Port(r.target.port)
	if err != nil {
		return policy.Route{}, false
	}
	return r.routes.Route(r.target.key, port.Port)
}

// selfRoute is a route that sends every call to the target's own Service
// port, if it exists.
func (r *kubeResolver) selfRoute() (policy.Route, bool) {
	svc, ok := r.reg.Get(r.target.key)
	if !ok {
		return policy.Route{}, false
	}
	port, err := svc.Port(r.target.port)
	if err != nil {
		return policy.Route{}, false
	}
	name := fmt.Sprintf("%s.%s:%d", svc.Key.Name, svc.Key.Namespace, port.Port)
	return policy.RouteTo(name, []string{name}, name), true
}

// pushRoute sends the route, each backend Service's endpoints (those
// discovery.Preferred chooses for the client's zone) and policy, and the
// service config of balancer/route. A backend whose
// Service or port does not exist is left out: its share of calls fails
// with UNAVAILABLE naming it. One with no ready endpoint is sent empty:
// its calls fail as any call to such a Service does.
func (r *kubeResolver) pushRoute(rt policy.Route) {
	st := &route.State{Route: rt, Router: policy.NewRouter(rt), Clusters: map[string]route.Cluster{}}
	r.filters.Publish(r.key, st.Router)
	var all []resolver.Endpoint
	for _, name := range rt.Clusters() {
		t, err := parseTarget(resolver.Target{URL: url.URL{Path: "/" + name}})
		if err != nil {
			// Not a Service's dial name: what the registry names the share
			// of a backend that does not resolve. Its calls fail.
			r.log.Debug("route backend is not a Service", "route", rt.Name, "cluster", name, "err", err)
			continue
		}
		if t.key != r.target.key {
			r.watched = append(r.watched, t.key)
		}
		svc, ok := r.reg.Get(t.key)
		if !ok {
			continue
		}
		port, err := svc.Port(t.port)
		if err != nil {
			continue
		}
		lb := policy.Cluster{LB: policy.RoundRobin}
		if b := svc.Balancing; b != nil {
			lb = *b // a TrafficPolicy's loadBalancer wins over the annotation
		} else if p, _, err := policy.ServiceLB(svc.Key.String(), svc.Annotations, policy.Defaults{}); err == nil {
			lb.LB = p
		}
		use, _ := port.Preferred(svc.TrafficDistribution, r.zone)
		eps := endpoints(use)
		st.Clusters[name] = route.Cluster{LB: lb.LB, HashHeader: lb.HashHeader, Endpoints: eps, CircuitBreaker: svc.Cluster.CircuitBreaker, Outlier: svc.Cluster.Outlier}
		all = append(all, eps...)
	}
	r.log.Debug("route", "route", rt.Name, "rules", len(rt.Rules), "clusters", len(st.Clusters))
	state := route.WithState(resolver.State{Endpoints: all}, st)
	state.ServiceConfig = r.cc.ParseServiceConfig(route.ServiceConfig)
	if err := r.cc.UpdateState(state); err != nil {
		r.log.Debug("update rejected", "err", err)
	}
	// The next push without a route sends its state whatever it is.
	r.sent, r.lastAddr, r.lastErr, r.lastPolicy = false, nil, "", policy.Cluster{}
}
