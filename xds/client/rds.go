package client

import (
	"fmt"
	"net"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/ballast-dev/ballast/policy"
)

// routeConfig is a decoded RouteConfiguration: one policy.Route per
// virtual host, each named by the configuration.
type routeConfig struct {
	name  string
	hosts []policy.Route
}

// decodeRouteConfig reads a RouteConfiguration. A route whose match or
// action the model cannot say is an error, so the response is NACKed
// rather than a call sent somewhere the control plane did not mean.
func decodeRouteConfig(rc *routev3.RouteConfiguration) (*routeConfig, error) {
	out := &routeConfig{name: rc.GetName()}
	for _, vh := range rc.GetVirtualHosts() {
		r := policy.Route{Name: rc.GetName(), Domains: vh.GetDomains()}
		for i, route := range vh.GetRoutes() {
			rule, err := decodeRule(route)
			if err != nil {
				return nil, fmt.Errorf("route configuration %s: virtual host %s: route %d: %w", rc.GetName(), vh.GetName(), i, err)
			}
			r.Rules = append(r.Rules, rule)
		}
		out.hosts = append(out.hosts, r)
	}
	return out, nil
}

func decodeRule(r *routev3.Route) (policy.Rule, error) {
	var rule policy.Rule
	m := r.GetMatch()
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		rule.Match.Path = policy.StringMatch{Type: policy.Prefix, Value: p.Prefix}
	default:
		return policy.Rule{}, fmt.Errorf("match %T is not supported", p)
	}
	if len(m.GetHeaders()) > 0 || len(m.GetQueryParameters()) > 0 || m.GetRuntimeFraction() != nil {
		return policy.Rule{}, fmt.Errorf("matches on headers, query parameters or fractions are not supported")
	}
	action := r.GetRoute()
	if action == nil {
		return policy.Rule{}, fmt.Errorf("action %T is not supported: want a route", r.GetAction())
	}
	switch c := action.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		rule.Backends = []policy.Backend{{Cluster: c.Cluster, Weight: 1}}
	case *routev3.RouteAction_WeightedClusters:
		for _, w := range c.WeightedClusters.GetClusters() {
			rule.Backends = append(rule.Backends, policy.Backend{Cluster: w.GetName(), Weight: w.GetWeight().GetValue()})
		}
		if len(rule.Backends) == 0 {
			return policy.Rule{}, fmt.Errorf("weighted clusters: none listed")
		}
	default:
		return policy.Rule{}, fmt.Errorf("cluster specifier %T is not supported", c)
	}
	return rule, nil
}

// hostFor is the virtual host that serves target (host:port, as dialled),
// as gRPC picks it (gRFC A27): an exact domain, then the longest suffix
// wildcard ("*.example.org"), then the longest prefix wildcard
// ("example.*"), then "*". Domains match with or without the port.
func (rc *routeConfig) hostFor(target string) (policy.Route, bool) {
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		host = target
	}
	best, bestRank, bestLen := -1, 0, 0
	for i, r := range rc.hosts {
		for _, d := range r.Domains {
			rank, n := domainMatch(strings.ToLower(d), strings.ToLower(target), strings.ToLower(host))
			if rank > bestRank || (rank == bestRank && rank > 0 && n > bestLen) {
				best, bestRank, bestLen = i, rank, n
			}
		}
	}
	if best < 0 {
		return policy.Route{}, false
	}
	return rc.hosts[best], true
}

// domainMatch ranks how d matches: 4 exact, 3 suffix wildcard, 2 prefix
// wildcard, 1 "*", 0 none; n is the length of the match, longer wins.
func domainMatch(d, target, host string) (rank, n int) {
	switch {
	case d == target || d == host:
		return 4, len(d)
	case d == "*":
		return 1, 0
	case strings.HasPrefix(d, "*") && (strings.HasSuffix(target, d[1:]) || strings.HasSuffix(host, d[1:])):
		return 3, len(d)
	case strings.HasSuffix(d, "*") && (strings.HasPrefix(target, d[:len(d)-1]) || strings.HasPrefix(host, d[:len(d)-1])):
		return 2, len(d)
	}
	return 0, 0
}
