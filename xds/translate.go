// Package xds serves the Registry's Services to proxyless gRPC clients over
// the xDS protocol: a pure translation from discovery snapshots to
// Listener, RouteConfiguration, Cluster and ClusterLoadAssignment resources,
// a go-control-plane server that streams them (state-of-the-world and
// delta), and the bootstrap file a client needs to find the server.
package xds

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"

	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	leastrequestv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/least_request/v3"
	roundrobinv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/xds/sidecar"
)

// PolicyAnnotation names the Service annotation that picks the LB policy of
// all of the Service's ports: round_robin, least_request or peak_ewma.
const PolicyAnnotation = discovery.LBPolicyAnnotation

// Policy is a load-balancing policy a Cluster asks its clients to use; the
// policies and their fallback order are discovery's (discovery.LBPolicy),
// shared with the kubernetes:/// resolver. Each becomes an ordered list in
// the Cluster's load_balancing_policy (gRFC A52).
type Policy = discovery.LBPolicy

// The policies a Service may ask for.
const (
	RoundRobin   = discovery.RoundRobin
	LeastRequest = discovery.LeastRequest
	PeakEWMA     = discovery.PeakEWMA
)

// PeakEWMABalancerName is the grpc-go balancer name of Ballast's peak-EWMA
// policy (balancer/peakewma.Name). grpc-go turns a TypedStruct policy whose
// type_url ends in this name into a config for the balancer registered under
// it, and skips the entry when no such balancer is registered.
const PeakEWMABalancerName = "ballast_peak_ewma"

// peakEWMATypeURL is the TypedStruct type_url naming the peak-EWMA balancer.
const peakEWMATypeURL = "type.googleapis.com/" + PeakEWMABalancerName

// ParsePolicy reads a policy name, as written in the annotation or a flag.
func ParsePolicy(s string) (Policy, error) { return discovery.ParseLBPolicy(s) }

// Options shape the translation. The zero value is usable.
type Options struct {
	// DefaultPolicy applies to Services without the policy annotation;
	// empty means RoundRobin.
	DefaultPolicy Policy
	// ClusterDomain is the cluster's DNS suffix; empty means "cluster.local".
	ClusterDomain string
	// BareNameNamespace is the one namespace whose Services are also served
	// under their bare name (`name:port`). A bare name means "this name in my
	// own namespace", but the resources are the same for every client, so a
	// bare name can stand for only one namespace; "default" is the natural
	// choice. Empty means "default"; "-" serves no bare names.
	BareNameNamespace string
}

func (o Options) policy() Policy            { return cmp.Or(o.DefaultPolicy, RoundRobin) }
func (o Options) clusterDomain() string     { return cmp.Or(o.ClusterDomain, "cluster.local") }
func (o Options) bareNameNamespace() string { return cmp.Or(o.BareNameNamespace, "default") }

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
	var out Resources
	policy := opts.policy()
	if p, ok, err := svc.LBPolicy(); err != nil {
		return Resources{}, err
	} else if ok {
		policy = p
	}
	lbPolicy, err := loadBalancingPolicy(policy)
	if err != nil {
		return Resources{}, fmt.Errorf("service %s: %w", svc.Key, err)
	}
	for i := range svc.Ports {
		port := &svc.Ports[i]
		if port.Protocol != "" && port.Protocol != "TCP" {
			continue
		}
		names := DialNames(svc.Key, port.Port, opts)
		canonical := names[len(names)-1]
		// Every listener of the port, one per dial name and one per
		// ClusterIP, holds the same connection manager: one message, made
		// and validated once, shared (resources are never modified once
		// built). Its stat prefix is the canonical name, so an Envoy
		// counts every alias of the port together.
		hcm, err := connectionManager(canonical, canonical)
		if err != nil {
			return Resources{}, fmt.Errorf("service %s: listener %s: %w", svc.Key, canonical, err)
		}
		for _, n := range names {
			out.Listeners = append(out.Listeners, apiListener(n, hcm))
		}
		for _, ip := range svc.ClusterIPs {
			if !ip.IsValid() || ip.IsUnspecified() {
				continue // headless: nothing to intercept
			}
			out.SidecarListeners = append(out.SidecarListeners, sidecar.Listener(netip.AddrPortFrom(ip.Unmap(), uint16(port.Port)), hcm))
		}
		out.Routes = append(out.Routes, routeConfiguration(canonical, names))
		out.Clusters = append(out.Clusters, edsCluster(canonical, lbPolicy))
		out.Endpoints = append(out.Endpoints, loadAssignment(canonical, port.Endpoints))
	}
	out.sort()
	return out, nil
}

// shape is what a Service's Listeners, RouteConfigurations and Clusters
// are made from: everything TranslateService reads except the endpoints
// (the server's Options never change). Two snapshots of a Service with the
// same shape differ only in their ClusterLoadAssignments, so an endpoint
// change, by far the most frequent change, needs only those rebuilt.
type shape struct {
	policy    string
	hasPolicy bool
	ports     string // "port/protocol," for every port, in order
	ips       string // the ClusterIPs, which the sidecar listeners name
}

func shapeOf(svc *discovery.Service) shape {
	sh := shape{}
	sh.policy, sh.hasPolicy = svc.Annotations[PolicyAnnotation]
	for _, p := range svc.Ports {
		sh.ports += strconv.Itoa(int(p.Port)) + "/" + p.Protocol + ","
	}
	for _, ip := range svc.ClusterIPs {
		sh.ips += ip.String() + ","
	}
	return sh
}

// translateEndpoints is TranslateService's ClusterLoadAssignments alone.
func translateEndpoints(svc *discovery.Service, opts Options) []*endpointv3.ClusterLoadAssignment {
	var out []*endpointv3.ClusterLoadAssignment
	for i := range svc.Ports {
		port := &svc.Ports[i]
		if port.Protocol != "" && port.Protocol != "TCP" {
			continue
		}
		names := DialNames(svc.Key, port.Port, opts)
		out = append(out, loadAssignment(names[len(names)-1], port.Endpoints))
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

var adsSource = &corev3.ConfigSource{
	ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	ResourceApiVersion:    corev3.ApiVersion_V3,
}

// routerFilter is the terminal HTTP filter gRPC's xDS client requires.
var routerFilter = mustAny(&routerv3.Router{})

// apiListener is the listener gRPC's xDS client asks for when it dials
// name; hcm is the port's connection manager.
func apiListener(name string, hcm *anypb.Any) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:        name,
		ApiListener: &listenerv3.ApiListener{ApiListener: hcm},
	}
}

// connectionManager is the HttpConnectionManager of every listener: RDS
// over ADS for route, then the router.
func connectionManager(statPrefix, route string) (*anypb.Any, error) {
	m := &hcmv3.HttpConnectionManager{
		StatPrefix: statPrefix,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource,
			RouteConfigName: route,
		}},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       "envoy.filters.http.router",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: routerFilter},
		}},
	}
	return anypb.New(m)
}

func routeConfiguration(name string, domains []string) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: name,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    name,
			Domains: domains,
			Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name},
				}},
			}},
		}},
	}
}

func edsCluster(name string, policy *clusterv3.LoadBalancingPolicy) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource, ServiceName: name},
		LoadBalancingPolicy:  policy,
	}
}

// Policy list entries, shared by every Cluster (resources are immutable once
// built).
var (
	roundRobinEntry   = policyEntry("envoy.load_balancing_policies.round_robin", &roundrobinv3.RoundRobin{})
	leastRequestEntry = policyEntry("envoy.load_balancing_policies.least_request", &leastrequestv3.LeastRequest{
		ChoiceCount: wrapperspb.UInt32(2),
	})
	peakEWMAEntry = policyEntry("ballast.load_balancing_policies.peak_ewma", &xdstypev3.TypedStruct{
		TypeUrl: peakEWMATypeURL,
		Value:   &structpb.Struct{},
	})
)

// loadBalancingPolicy is the Cluster's ordered policy list for p. The
// endpoint-picking policy is listed directly, not under wrr_locality: the
// policy sees every endpoint of the priority, whatever its zone, which is
// what per-call balancing across a Service's pods means.
func loadBalancingPolicy(p Policy) (*clusterv3.LoadBalancingPolicy, error) {
	var entries []*clusterv3.LoadBalancingPolicy_Policy
	switch p {
	case RoundRobin:
		entries = []*clusterv3.LoadBalancingPolicy_Policy{roundRobinEntry}
	case LeastRequest:
		entries = []*clusterv3.LoadBalancingPolicy_Policy{leastRequestEntry, roundRobinEntry}
	case PeakEWMA:
		entries = []*clusterv3.LoadBalancingPolicy_Policy{peakEWMAEntry, leastRequestEntry, roundRobinEntry}
	default:
		return nil, fmt.Errorf("unknown lb policy %q", p)
	}
	return &clusterv3.LoadBalancingPolicy{Policies: entries}, nil
}

func policyEntry(name string, config proto.Message) *clusterv3.LoadBalancingPolicy_Policy {
	return &clusterv3.LoadBalancingPolicy_Policy{
		TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: name, TypedConfig: mustAny(config)},
	}
}

// loadAssignment groups endpoints by zone, one locality each, in zone order.
// A locality's weight is its endpoint count (gRPC ignores zero-weight
// localities; the weight only matters to a client that weighs localities).
func loadAssignment(name string, endpoints []discovery.Endpoint) *endpointv3.ClusterLoadAssignment {
	byZone := map[string][]*endpointv3.LbEndpoint{}
	for _, e := range endpoints {
		var health corev3.HealthStatus
		switch {
		case e.Ready:
			health = corev3.HealthStatus_HEALTHY
		case e.Serving && e.Terminating:
			health = corev3.HealthStatus_DRAINING
		default:
			continue
		}
		byZone[e.Zone] = append(byZone[e.Zone], &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address:       e.Address.Addr().String(),
					PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(e.Address.Port())},
				}}},
				Hostname: e.Pod,
			}},
			HealthStatus: health,
		})
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	for _, zone := range slices.Sorted(maps.Keys(byZone)) {
		eps := byZone[zone]
		cla.Endpoints = append(cla.Endpoints, &endpointv3.LocalityLbEndpoints{
			Locality:            &corev3.Locality{Zone: zone},
			LbEndpoints:         eps,
			LoadBalancingWeight: wrapperspb.UInt32(uint32(len(eps))),
		})
	}
	return cla
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(fmt.Sprintf("xds: marshal %T: %v", m, err))
	}
	return a
}
