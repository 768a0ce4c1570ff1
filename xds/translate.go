// Package xds serves the Registry's Services to proxyless gRPC clients over
// the xDS protocol: a pure translation from discovery snapshots to
// Listener, RouteConfiguration, Cluster and ClusterLoadAssignment resources,
// a go-control-plane server that streams them (state-of-the-world and
// delta), and the bootstrap file a client needs to find the server.
package xds

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strconv"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/policy"
	"github.com/ballast-dev/ballast/xds/sidecar"
)

// Options shape the translation. The zero value is usable.
type Options struct {
	// DefaultPolicy applies to Services without the lb-policy annotation;
	// empty means round_robin.
	DefaultPolicy policy.LB
	// ClusterDomain is the cluster's DNS suffix; empty means "cluster.local".
	ClusterDomain string
	// BareNameNamespace is the one namespace whose Services are also served
	// under their bare name (`name:port`). A bare name means "this name in my
	// own namespace", but the resources are the same for every client, so a
	// bare name can stand for only one namespace; "default" is the natural
	// choice. Empty means "default"; "-" serves no bare names.
	BareNameNamespace string
}

func (o Options) defaults() policy.Defaults { return policy.Defaults{LB: o.DefaultPolicy} }
func (o Options) clusterDomain() string     { return cmp.Or(o.ClusterDomain, "cluster.local") }
func (o Options) bareNameNamespace() string { return cmp.Or(o.BareNameNamespace, "default") }
func (o Options) clusterName(k discovery.Key, port int32) string {
	return ClusterName(k, port, o)
}

// Resources are the xDS resources of some Services, each list sorted by
// resource name.
type Resources struct {
	Listeners []*listenerv3.Listener
	// SidecarListeners are the listeners a sidecar subscribes to (by
	// wildcard: it cannot know the addresses beforehand): one per
	// ClusterIP:port, named by that address, each naming the port's
	// RouteConfiguration. They are how `ballast proxy` maps an intercepted
	// connection's original destination to its Service without reading the
	// Kubernetes API itself.
	SidecarListeners []*listenerv3.Listener
	Routes           []*routev3.RouteConfiguration
	Clusters         []*clusterv3.Cluster
	Endpoints        []*endpointv3.ClusterLoadAssignment
}

// Len is the number of resources of every type.
func (r *Resources) Len() int {
	return len(r.Listeners) + len(r.SidecarListeners) + len(r.Routes) + len(r.Clusters) + len(r.Endpoints)
}

func (r *Resources) append(o Resources) {
	r.Listeners = append(r.Listeners, o.Listeners...)
	r.SidecarListeners = append(r.SidecarListeners, o.SidecarListeners...)
	r.Routes = append(r.Routes, o.Routes...)
	r.Clusters = append(r.Clusters, o.Clusters...)
	r.Endpoints = append(r.Endpoints, o.Endpoints...)
}

func (r *Resources) sort() {
	slices.SortFunc(r.Listeners, func(a, b *listenerv3.Listener) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(r.SidecarListeners, func(a, b *listenerv3.Listener) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(r.Routes, func(a, b *routev3.RouteConfiguration) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(r.Clusters, func(a, b *clusterv3.Cluster) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(r.Endpoints, func(a, b *endpointv3.ClusterLoadAssignment) int {
		return cmp.Compare(a.ClusterName, b.ClusterName)
	})
}

// Translate turns Services into the resources gRPC's xDS client asks for.
// Services it cannot translate (a bad annotation) are left out and named in
// the returned error, so one bad Service never hides the others.
func Translate(services []*discovery.Service, opts Options) (Resources, error) {
	var (
		out  Resources
		errs []error
	)
	for _, svc := range services {
		r, err := TranslateService(svc, opts)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out.append(r)
	}
	out.sort()
	return out, errors.Join(errs...)
}

// TranslateService turns one Service into its resources. For each TCP port
// it makes:
//
//   - a Listener for every name a client may dial: name.ns:port,
//     name.ns.svc:port, name.ns.svc.<domain>:port, and name:port for the
//     BareNameNamespace; each an api_listener whose HttpConnectionManager
//     names the port's RouteConfiguration over ADS and runs the router;
//   - for each ClusterIP, a sidecar Listener named <ClusterIP>:port with
//     that socket address and the same HttpConnectionManager in a filter
//     chain, as Envoy takes it;
//   - a RouteConfiguration named name.ns.svc.<domain>:port with one virtual
//     host for those names, routing everything to the Cluster;
//   - a Cluster of the same name, type EDS over ADS, with the Service's
//     load_balancing_policy list;
//   - a ClusterLoadAssignment of the same name with one locality per zone:
//     ready endpoints HEALTHY, serving-and-terminating ones DRAINING, the
//     rest left out.
//
// The resources are valid by construction for any Service the registry can
// hold (names are non-empty, ports are uint16, addresses parsed IPs, the
// policies fixed): the tests check every translation they make with
// go-control-plane's generated Validate, and clients NACK anything they
// reject, which the server logs and counts. The server does not run that
// validation itself on purpose: its generated code for every Envoy message
// linked (a fifth of ballast-control's code, about 4 MiB of RSS) would
// stay in the binary for a check that cannot fail.
func TranslateService(svc *discovery.Service, opts Options) (Resources, error) {
	ports, err := Model(svc, opts)
	if err != nil {
		return Resources{}, err
	}
	var out Resources
	for _, m := range ports {
		canonical := m.Route.Name
		// Every listener of the port, one per dial name and one per
		// ClusterIP, holds the same connection manager: one message, made
		// once, shared (resources are never modified once built). Its stat
		// prefix is the canonical name, so an Envoy counts every alias of
		// the port together.
		hcm, err := connectionManager(canonical, canonical, injectsFaults(m.Route))
		if err != nil {
			return Resources{}, fmt.Errorf("service %s: listener %s: %w", svc.Key, canonical, err)
		}
		for _, n := range m.Route.Domains {
			out.Listeners = append(out.Listeners, apiListener(n, hcm))
		}
		for _, ip := range svc.ClusterIPs {
			if !ip.IsValid() || ip.IsUnspecified() {
				continue // headless: nothing to intercept
			}
			out.SidecarListeners = append(out.SidecarListeners, sidecar.Listener(netip.AddrPortFrom(ip.Unmap(), m.Port), hcm))
		}
		var hashHeaders map[string]string
		if m.Cluster.LB == policy.RingHash && m.Cluster.HashHeader != "" {
			hashHeaders = map[string]string{m.Cluster.Name: m.Cluster.HashHeader}
		}
		out.Routes = append(out.Routes, renderRoute(m.Route, hashHeaders))
		out.Clusters = append(out.Clusters, renderCluster(m.Cluster))
		out.Endpoints = append(out.Endpoints, renderEndpoints(m.Endpoints))
		for _, name := range m.Unavailable {
			out.Clusters = append(out.Clusters, renderCluster(policy.Cluster{Name: name, LB: policy.RoundRobin}))
			out.Endpoints = append(out.Endpoints, renderEndpoints(policy.Endpoints{Cluster: name}))
		}
	}
	out.sort()
	return out, nil
}

// PortModel is what a Service port asks of its clients, in the policy
// model: the route of the port's dial names, the Cluster it names and
// that Cluster's endpoints.
type PortModel struct {
	Port      uint16
	Route     policy.Route
	Cluster   policy.Cluster
	Endpoints policy.Endpoints
	// Unavailable are the Clusters with no endpoints that the route sends
	// the calls to which must fail (see discovery.UnavailableCluster).
	Unavailable []string
}

// Model is the policy model of each of svc's TCP ports, which
// TranslateService renders: a route for the port's dial names (the last,
// fully qualified one names the route, the Cluster and its endpoints)
// with the Service's policy. A port with a route (svc.Routes: the
// GRPCRoutes attached to it) routes by its rules, each backend named by
// its Service port's Cluster; a port without one sends every call to its
// own Cluster.
func Model(svc *discovery.Service, opts Options) ([]PortModel, error) {
	lb, _, err := policy.ServiceLB(svc.Key.String(), svc.Annotations, opts.defaults())
	if err != nil {
		return nil, err
	}
	var hashHeader string
	if b := svc.Balancing; b != nil {
		// A TrafficPolicy's loadBalancer wins over the annotation, which is
		// its short form.
		lb, hashHeader = b.LB, b.HashHeader
	}
	var out []PortModel
	for _, port := range tcpPorts(svc) {
		names := DialNames(svc.Key, port.Port, opts)
		canonical := names[len(names)-1]
		m := PortModel{
			Port:      uint16(port.Port),
			Route:     policy.RouteTo(canonical, names, canonical),
			Cluster:   svc.Cluster,
			Endpoints: endpointsOf(canonical, port.Endpoints, svc.TrafficDistribution, ""),
		}
		m.Cluster.Name, m.Cluster.LB, m.Cluster.HashHeader = canonical, lb, hashHeader
		m.Route.Rules[0].Call = svc.Call
		if pr, ok := svc.Route(port.Port); ok {
			m.Route, m.Unavailable = pr.Model(canonical, names, opts.clusterName)
		}
		out = append(out, m)
	}
	return out, nil
}

// ClusterName is the name of the Cluster of a Service port: its fully
// qualified dial name.
func ClusterName(k discovery.Key, port int32, opts Options) string {
	return k.Name + "." + k.Namespace + ".svc." + opts.clusterDomain() + ":" + strconv.Itoa(int(port))
}

// tcpPorts are the ports of svc that gRPC can use.
func tcpPorts(svc *discovery.Service) []*discovery.Port {
	var out []*discovery.Port
	for i := range svc.Ports {
		if p := &svc.Ports[i]; p.Protocol == "" || p.Protocol == "TCP" {
			out = append(out, p)
		}
	}
	return out
}

// shape is what a Service's Listeners, RouteConfigurations and Clusters
// are made from: everything TranslateService reads except the endpoints
// (the server's Options never change). Two snapshots of a Service with the
// same shape differ only in their ClusterLoadAssignments, so an endpoint
// change, by far the most frequent change, needs only those rebuilt.
type shape struct {
	policy    string
	hasPolicy bool
	routes    string // svc.Routes, svc.Call and svc.Cluster as JSON (pointers followed, not printed)
	ports     string // "port/protocol," for every port, in order
	ips       string // the ClusterIPs, which the sidecar listeners name
}

func shapeOf(svc *discovery.Service) shape {
	sh := shape{}
	sh.policy, sh.hasPolicy = svc.Annotations[policy.LBAnnotation]
	if len(svc.Routes) > 0 || !reflect.ValueOf(svc.Call).IsZero() || svc.Balancing != nil || !reflect.ValueOf(svc.Cluster).IsZero() {
		b, err := json.Marshal(struct {
			R []discovery.PortRoute
			C policy.CallPolicy
			B *policy.Cluster
			L policy.Cluster
		}{svc.Routes, svc.Call, svc.Balancing, svc.Cluster})
		if err != nil {
			panic(fmt.Sprintf("xds: shape of %s: %v", svc.Key, err)) // plain data: a bug, not an input
		}
		sh.routes = string(b)
	}
	for _, p := range svc.Ports {
		sh.ports += strconv.Itoa(int(p.Port)) + "/" + p.Protocol + ","
	}
	for _, ip := range svc.ClusterIPs {
		sh.ips += ip.String() + ","
	}
	return sh
}

// translateEndpoints is TranslateService's ClusterLoadAssignments alone,
// as a client in zone gets them (zone "" is TranslateService's: no zone).
func translateEndpoints(svc *discovery.Service, zone string, opts Options) []*endpointv3.ClusterLoadAssignment {
	var out []*endpointv3.ClusterLoadAssignment
	for _, port := range tcpPorts(svc) {
		names := DialNames(svc.Key, port.Port, opts)
		canonical := names[len(names)-1]
		out = append(out, renderEndpoints(endpointsOf(canonical, port.Endpoints, svc.TrafficDistribution, zone)))
		if pr, ok := svc.Route(port.Port); ok {
			_, unavailable := pr.Model(canonical, names, opts.clusterName)
			for _, name := range unavailable {
				out = append(out, renderEndpoints(policy.Endpoints{Cluster: name}))
			}
		}
	}
	return out
}

// DialNames lists the target names (host:port) under which a client may
// dial a Service port, shortest first; the last is the fully qualified one,
// which also names the port's route, cluster and endpoints.
func DialNames(k discovery.Key, port int32, opts Options) []string {
	p := ":" + strconv.Itoa(int(port))
	var names []string
	if ns := opts.bareNameNamespace(); ns != "-" && ns == k.Namespace {
		names = append(names, k.Name+p)
	}
	base := k.Name + "." + k.Namespace
	return append(names, base+p, base+".svc"+p, base+".svc."+opts.clusterDomain()+p)
}

// endpointsOf are the endpoints of a Service port as a client in zone gets
// them: those discovery.Preferred chooses for it Healthy at priority 0,
// the other routable ones (when it chose the client's zone) Healthy at
// priority 1, for the client to fail over to by itself when its zone's stop
// answering before discovery says so; terminating ones that still serve
// Draining (they finish their calls but take no new ones), at their zone's
// priority; the rest left out. Sorted by priority then zone, as xDS
// carries them (one locality per zone and priority).
func endpointsOf(cluster string, eps []discovery.Endpoint, trafficDistribution, zone string) policy.Endpoints {
	out := policy.Endpoints{Cluster: cluster}
	use, rest := discovery.Preferred(eps, trafficDistribution, zone)
	priority := make(map[netip.AddrPort]int, len(use)+len(rest))
	for _, e := range use {
		priority[e.Address] = 0
	}
	for _, e := range rest {
		priority[e.Address] = 1
	}
	for _, e := range eps {
		p, routable := priority[e.Address]
		var h policy.Health
		switch {
		case routable:
			h = policy.Healthy
		case e.Serving && e.Terminating:
			h = policy.Draining
			if len(rest) > 0 && e.Zone != zone {
				p = 1
			}
		default:
			continue
		}
		out.Endpoints = append(out.Endpoints, policy.Endpoint{Address: e.Address, Zone: e.Zone, Pod: e.Pod, Health: h, Priority: p})
	}
	slices.SortStableFunc(out.Endpoints, func(a, b policy.Endpoint) int {
		return cmp.Or(cmp.Compare(a.Priority, b.Priority), cmp.Compare(a.Zone, b.Zone))
	})
	return out
}
