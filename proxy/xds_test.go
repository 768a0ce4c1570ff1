package proxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	grpcxds "google.golang.org/grpc/xds"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/greeter/greetertest"
	"github.com/ballast-dev/ballast/policy"
	"github.com/ballast-dev/ballast/xds"
	"github.com/ballast-dev/ballast/xds/client"
)

// startControlPlane serves, over ADS on loopback, the xDS resources of one
// Service (listener name) backed by addrs: the shape Ballast's control
// plane gives proxyless clients. It returns the server's address.
func startControlPlane(t *testing.T, nodeID, name string, addrs []string) string {
	t.Helper()
	route := &routev3.Route{
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name}}},
	}
	return startRoutedControlPlane(t, nodeID, name, []*routev3.Route{route}, map[string][]string{name: addrs})
}

// startRoutedControlPlane serves, over ADS on loopback, a listener name
// whose inline route has routes, and an EDS Cluster (round robin) per
// entry of clusters with those endpoints. It returns the server's address.
func startRoutedControlPlane(t *testing.T, nodeID, name string, routes []*routev3.Route, clusters map[string][]string) string {
	t.Helper()
	anyOf := func(m proto.Message) *anypb.Any {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	hcm := &hcmv3.HttpConnectionManager{
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name:         name,
			VirtualHosts: []*routev3.VirtualHost{{Name: name, Domains: []string{"*"}, Routes: routes}},
		}},
		HttpFilters: []*hcmv3.HttpFilter{{Name: "router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: anyOf(&routerv3.Router{})}}},
	}
	resources := map[resource.Type][]types.Resource{
		resource.ListenerType: {&listenerv3.Listener{Name: name, ApiListener: &listenerv3.ApiListener{ApiListener: anyOf(hcm)}}},
	}
	for cluster, addrs := range clusters {
		resources[resource.ClusterType] = append(resources[resource.ClusterType], &clusterv3.Cluster{
			Name:                 cluster,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			}},
			LbPolicy: clusterv3.Cluster_ROUND_ROBIN,
		})
		var lbEndpoints []*endpointv3.LbEndpoint
		for _, a := range addrs {
			ap := netip.MustParseAddrPort(a)
			lbEndpoints = append(lbEndpoints, &endpointv3.LbEndpoint{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
					Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address:       ap.Addr().String(),
						PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(ap.Port())},
					}},
				}}},
				HealthStatus: corev3.HealthStatus_HEALTHY,
			})
		}
		resources[resource.EndpointType] = append(resources[resource.EndpointType], &endpointv3.ClusterLoadAssignment{
			ClusterName: cluster,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				Locality:            &corev3.Locality{},
				LbEndpoints:         lbEndpoints,
				LoadBalancingWeight: wrapperspb.UInt32(1),
			}},
		})
	}
	return serveSnapshot(t, nodeID, resources)
}

// serveSnapshot serves resources over ADS on loopback to nodeID until the
// test ends, and returns the server's address.
func serveSnapshot(t *testing.T, nodeID string, resources map[resource.Type][]types.Resource) string {
	t.Helper()
	snap, err := cachev3.NewSnapshot("1", resources)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cache := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	if err := cache.SetSnapshot(ctx, nodeID, snap); err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(gs, serverv3.NewServer(ctx, cache, nil))
	lis := listen(t)
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(lis) }()
	t.Cleanup(func() { cancel(); gs.Stop(); <-done })
	return lis.Addr().String()
}

// TestXDSUpstream: the proxy resolves its target with a go-control-plane
// server and balances calls across the endpoints it names, like a
// proxyless grpc-go client of the same server.
func TestXDSUpstream(t *testing.T) {
	const nodeID = "ballast-proxy~default~test"
	const name = "greeter.default:50051"
	cp := startControlPlane(t, nodeID, name, startGreeters(t, 3))
	bootstrap, err := xds.Bootstrap{Server: cp, ID: nodeID}.JSON()
	if err != nil {
		t.Fatal(err)
	}
	xdsResolver, err := grpcxds.NewXDSResolverWithConfigForTesting(bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	xdsOpt := grpc.WithResolvers(xdsResolver)

	t.Run("proxied", func(t *testing.T) {
		_, addr := startOutbound(t, XDSTarget("greeter", "default", 50051), Options{XDS: runXDSClient(t, cp, nodeID)})
		if pods := spread(t, dial(t, addr), 3, 30); !even(pods, 3, 30) {
			t.Fatalf("30 calls through the proxy reached %v, want 10 on each of 3 pods", pods)
		}
	})
	t.Run("proxyless, same option", func(t *testing.T) {
		if pods := spread(t, dial(t, "xds:///"+name, xdsOpt), 3, 30); !even(pods, 3, 30) {
			t.Fatalf("30 proxyless calls reached %v, want 10 on each of 3 pods", pods)
		}
	})
}

func keyOf(ns, name string) discovery.Key { return discovery.Key{Namespace: ns, Name: name} }

// startBallastControlPlane serves over ADS the resources Ballast's control
// plane makes for services (xds.Translate: Listener → RDS route (a
// Service's GRPCRoutes, if any) → Cluster with the Service's policy list →
// endpoints), to nodeID.
func startBallastControlPlane(t *testing.T, nodeID string, services ...*discovery.Service) string {
	t.Helper()
	res, err := xds.Translate(services, xds.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var listeners, routes, clusters, endpoints []types.Resource
	for _, r := range res.Listeners {
		listeners = append(listeners, r)
	}
	for _, r := range res.Routes {
		routes = append(routes, r)
	}
	for _, r := range res.Clusters {
		clusters = append(clusters, r)
	}
	for _, r := range res.Endpoints {
		endpoints = append(endpoints, r)
	}
	return serveSnapshot(t, nodeID, map[resource.Type][]types.Resource{
		resource.ListenerType: listeners, resource.RouteType: routes,
		resource.ClusterType: clusters, resource.EndpointType: endpoints,
	})
}

// TestXDSPolicy: with each policy Ballast's control plane can name, the
// proxy runs the balancer a proxyless grpc-go client would pick from the
// same Cluster, and balances with it.
func TestXDSPolicy(t *testing.T) {
	const nodeID = "ballast-proxy~default~policy"
	addrs := startGreeters(t, 3)
	tests := []struct {
		policy       policy.LB
		wantBalancer string
	}{
		{policy.RoundRobin, "round_robin"},
		{policy.LeastRequest, "ballast_p2c"},
		{policy.PeakEWMA, "ballast_peak_ewma"},
	}
	for _, tc := range tests {
		t.Run(string(tc.policy), func(t *testing.T) {
			svc := &discovery.Service{
				Key:         keyOf("default", "greeter"),
				Annotations: map[string]string{policy.LBAnnotation: string(tc.policy)},
				Ports:       []discovery.Port{{Port: 50051, Protocol: "TCP"}},
			}
			for i, a := range addrs {
				svc.Ports[0].Endpoints = append(svc.Ports[0].Endpoints, discovery.Endpoint{
					Address: netip.MustParseAddrPort(a), Ready: true, Serving: true, Pod: fmt.Sprintf("pod-%d", i),
				})
			}
			cp := startBallastControlPlane(t, nodeID, svc)
			target := XDSTarget(svc.Key.Name, svc.Key.Namespace, 50051)
			p, addr := startOutbound(t, target, Options{XDS: runXDSClient(t, cp, nodeID)})
			// spread fails unless calls reach all 3 pods (in its warm-up)
			// and all 30 counted calls succeed; how they spread is the
			// policy's business.
			spread(t, dial(t, addr), 3, 30)
			up, _ := p.upstreams.get(target)
			got := make(chan string, 1)
			h := onlyHost(t, up)
			h.work.Schedule(func() { got <- h.balName })
			if b := <-got; b != tc.wantBalancer {
				t.Fatalf("the proxy runs balancer %q, want %q", b, tc.wantBalancer)
			}
		})
	}
}

// runXDSClient runs the process's xDS client for server as nodeID until
// the test ends.
func runXDSClient(t *testing.T, server, nodeID string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Server: server, Node: client.Node{ID: nodeID}, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// TestXDSWeightedRoute: a route of weighted clusters, served over ADS,
// splits the calls 90/10 within ±2% over 10,000 calls through the sidecar,
// as it does for a proxyless grpc-go client of the same control plane.
func TestXDSWeightedRoute(t *testing.T) {
	const nodeID = "ballast~client.default"
	const name = "greeter.default:50051"
	addrs := startGreeters(t, 2) // pod-0 serves v1, pod-1 v2
	route := &routev3.Route{
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{
			WeightedClusters: &routev3.WeightedCluster{Clusters: []*routev3.WeightedCluster_ClusterWeight{
				{Name: "greeter-v1", Weight: wrapperspb.UInt32(90)},
				{Name: "greeter-v2", Weight: wrapperspb.UInt32(10)},
			}},
		}}},
	}
	cp := startRoutedControlPlane(t, nodeID, name, []*routev3.Route{route}, map[string][]string{"greeter-v1": {addrs[0]}, "greeter-v2": {addrs[1]}})
	bootstrap, err := xds.Bootstrap{Server: cp, ID: nodeID}.JSON()
	if err != nil {
		t.Fatal(err)
	}
	xdsResolver, err := grpcxds.NewXDSResolverWithConfigForTesting(bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	_, proxyAddr := startOutbound(t, XDSTarget("greeter", "default", 50051), Options{XDS: runXDSClient(t, cp, nodeID)})
	for _, mode := range []struct {
		name string
		conn *grpc.ClientConn
	}{
		{"sidecar", dial(t, proxyAddr)},
		{"proxyless", dial(t, "xds:///"+name, grpc.WithResolvers(xdsResolver))},
	} {
		t.Run(mode.name, func(t *testing.T) {
			counts := greetertest.Spread(t, mode.conn, 10000, 8)
			if v2 := counts["pod-1"]; v2 < 800 || v2 > 1200 || counts["pod-0"]+v2 != 10000 {
				t.Fatalf("calls by pod %v, want pod-1 (greeter-v2) at 10%% ±2%% (800..1200), the rest on pod-0", counts)
			}
		})
	}
}
