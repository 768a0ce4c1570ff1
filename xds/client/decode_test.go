package client

import (
	"reflect"
	"strings"
	"testing"
	"time"

	wclusterv3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/config/cluster/v3"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ballast-dev/ballast/policy"
)

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func edsCluster(lb clusterv3.Cluster_LbPolicy, list *clusterv3.LoadBalancingPolicy) *clusterv3.Cluster {
	return &clusterv3.Cluster{Name: "c", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}, LbPolicy: lb, LoadBalancingPolicy: list}
}

func socket(addr string, port uint32) *endpointv3.LbEndpoint {
	return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
		}}},
	}}}
}

// What the model cannot say, or what is malformed, is rejected with an
// error naming the resource, so the response is NACKed and the last good
// one kept.
func TestDecodeRejects(t *testing.T) {
	route := func(m *routev3.RouteMatch, a *routev3.RouteAction) *routev3.RouteConfiguration {
		return &routev3.RouteConfiguration{Name: "r", VirtualHosts: []*routev3.VirtualHost{{
			Name: "vh", Domains: []string{"*"},
			Routes: []*routev3.Route{{Match: m, Action: &routev3.Route_Route{Route: a}}},
		}}}
	}
	toC := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "c"}}
	prefix := &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
	tests := []struct {
		name    string
		typeURL string
		res     func(t *testing.T) *anypb.Any
		wantErr string
	}{
		{"not the type asked for", resourcev3.ListenerType, func(t *testing.T) *anypb.Any { return mustAny(t, wrapperspb.String("x")) }, "mismatched message type"},
		{"sidecar listener without address", resourcev3.ListenerType, func(t *testing.T) *anypb.Any {
			return mustAny(t, &listenerv3.Listener{Name: "l"})
		}, "listener l: address"},
		{"api listener without route", resourcev3.ListenerType, func(t *testing.T) *anypb.Any {
			return mustAny(t, &listenerv3.Listener{Name: "l", ApiListener: &listenerv3.ApiListener{ApiListener: mustAny(t, &hcmv3.HttpConnectionManager{})}})
		}, "listener l: no route configuration"},
		{"path template", resourcev3.RouteType, func(t *testing.T) *anypb.Any {
			return mustAny(t, route(&routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: "/a"}}, toC))
		}, "route configuration r: virtual host vh: route 0: match"},
		{"case-insensitive path", resourcev3.RouteType, func(t *testing.T) *anypb.Any {
			m := &routev3.RouteMatch{PathSpecifier: prefix.PathSpecifier, CaseSensitive: wrapperspb.Bool(false)}
			return mustAny(t, route(m, toC))
		}, "case-insensitive"},
		{"header match without a matcher", resourcev3.RouteType, func(t *testing.T) *anypb.Any {
			m := &routev3.RouteMatch{PathSpecifier: prefix.PathSpecifier, Headers: []*routev3.HeaderMatcher{{Name: "x"}}}
			return mustAny(t, route(m, toC))
		}, `header "x": matcher`},
		{"inverted header match", resourcev3.RouteType, func(t *testing.T) *anypb.Any {
			m := &routev3.RouteMatch{PathSpecifier: prefix.PathSpecifier, Headers: []*routev3.HeaderMatcher{{
				Name: "x", InvertMatch: true, HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: "y"},
			}}}
			return mustAny(t, route(m, toC))
		}, "inverted"},
		{"weighted clusters of total weight 0", resourcev3.RouteType, func(t *testing.T) *anypb.Any {
			return mustAny(t, route(prefix, &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{
				Clusters: []*routev3.WeightedCluster_ClusterWeight{{Name: "a", Weight: wrapperspb.UInt32(0)}},
			}}}))
		}, "total weight is 0"},
		{"no cluster", resourcev3.RouteType, func(t *testing.T) *anypb.Any {
			return mustAny(t, route(prefix, &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_ClusterHeader{ClusterHeader: "x"}}))
		}, "cluster specifier"},
		{"static cluster", resourcev3.ClusterType, func(t *testing.T) *anypb.Any {
			return mustAny(t, &clusterv3.Cluster{Name: "c", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}})
		}, "cluster c: type STATIC"},
		{"maglev", resourcev3.ClusterType, func(t *testing.T) *anypb.Any {
			return mustAny(t, edsCluster(clusterv3.Cluster_MAGLEV, nil))
		}, "cluster c: lb_policy MAGLEV"},
		{"ejection percent over 100", resourcev3.ClusterType, func(t *testing.T) *anypb.Any {
			c := edsCluster(clusterv3.Cluster_ROUND_ROBIN, nil)
			c.OutlierDetection = &clusterv3.OutlierDetection{MaxEjectionPercent: wrapperspb.UInt32(101)}
			return mustAny(t, c)
		}, "cluster c: outlier_detection.max_ejection_percent 101 is over 100"},
		{"negative interval", resourcev3.ClusterType, func(t *testing.T) *anypb.Any {
			c := edsCluster(clusterv3.Cluster_ROUND_ROBIN, nil)
			c.OutlierDetection = &clusterv3.OutlierDetection{Interval: durationpb.New(-time.Second)}
			return mustAny(t, c)
		}, "cluster c: outlier_detection.interval"},
		{"no known policy in the list", resourcev3.ClusterType, func(t *testing.T) *anypb.Any {
			return mustAny(t, edsCluster(0, &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{{
				TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "x", TypedConfig: mustAny(t, wrapperspb.String("x"))},
			}}}))
		}, "no supported policy"},
		{"endpoint without an IP", resourcev3.EndpointType, func(t *testing.T) *anypb.Any {
			return mustAny(t, &endpointv3.ClusterLoadAssignment{ClusterName: "c", Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{socket("greeter", 80)},
			}}})
		}, "cluster load assignment c: endpoint address"},
		{"endpoint port out of range", resourcev3.EndpointType, func(t *testing.T) *anypb.Any {
			return mustAny(t, &endpointv3.ClusterLoadAssignment{ClusterName: "c", Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{socket("10.0.0.1", 70000)},
			}}})
		}, "port 70000 out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decode(tt.typeURL, tt.res(t))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// Forms other control planes send (istiod, go-control-plane examples) read
// as the policy they mean.
func TestDecodeClusterPolicies(t *testing.T) {
	tests := []struct {
		name    string
		cluster *clusterv3.Cluster
		want    policy.LB
	}{
		{"lb_policy round robin", edsCluster(clusterv3.Cluster_ROUND_ROBIN, nil), policy.RoundRobin},
		{"lb_policy least request", edsCluster(clusterv3.Cluster_LEAST_REQUEST, nil), policy.LeastRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := decodeCluster(onWire[wclusterv3.Cluster](t, tt.cluster))
			if err != nil || c.policy.LB != tt.want || c.eds != "c" {
				t.Fatalf("got %+v, %v; want %s with endpoints c", c, err, tt.want)
			}
		})
	}
}

// A Cluster's circuit breakers and outlier detection in the forms other
// control planes send, read as gRPC's xDS clients read them (gRFC A32,
// A50) plus Envoy's consecutive_5xx.
func TestDecodeClusterGuards(t *testing.T) {
	def, sr := policy.DefaultOutlierDetection, policy.DefaultSuccessRate
	tests := []struct {
		name    string
		edit    func(*clusterv3.Cluster)
		breaker policy.CircuitBreaker
		outlier *policy.OutlierDetection
	}{
		{"no circuit breakers: gRPC's 1024", func(*clusterv3.Cluster) {}, policy.CircuitBreaker{MaxRequests: policy.DefaultMaxRequests}, nil},
		{"another priority's thresholds only", func(c *clusterv3.Cluster) {
			c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{Priority: corev3.RoutingPriority_HIGH, MaxRequests: wrapperspb.UInt32(7)}}}
		}, policy.CircuitBreaker{MaxRequests: policy.DefaultMaxRequests}, nil},
		{"every bound", func(c *clusterv3.Cluster) {
			c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
				MaxRequests: wrapperspb.UInt32(3), MaxPendingRequests: wrapperspb.UInt32(2), MaxConnections: wrapperspb.UInt32(1)}}}
		}, policy.CircuitBreaker{MaxRequests: 3, MaxPendingRequests: 2, MaxConnections: 1}, nil},
		{"empty outlier detection: success rate and consecutive 5xx on, with defaults", func(c *clusterv3.Cluster) {
			c.OutlierDetection = &clusterv3.OutlierDetection{}
		}, policy.CircuitBreaker{MaxRequests: policy.DefaultMaxRequests}, &policy.OutlierDetection{
			Interval: def.Interval, BaseEjectionTime: def.BaseEjectionTime, MaxEjectionTime: def.MaxEjectionTime,
			MaxEjectionPercent: def.MaxEjectionPercent, ConsecutiveErrors: 5, SuccessRate: &sr,
		}},
		{"failure percentage with defaults, the rest off", func(c *clusterv3.Cluster) {
			c.OutlierDetection = &clusterv3.OutlierDetection{EnforcingConsecutive_5Xx: wrapperspb.UInt32(0), EnforcingSuccessRate: wrapperspb.UInt32(0),
				EnforcingFailurePercentage: wrapperspb.UInt32(50)}
		}, policy.CircuitBreaker{MaxRequests: policy.DefaultMaxRequests}, &policy.OutlierDetection{
			Interval: def.Interval, BaseEjectionTime: def.BaseEjectionTime, MaxEjectionTime: def.MaxEjectionTime,
			MaxEjectionPercent: def.MaxEjectionPercent, FailurePercentage: &policy.FailurePercentageEjection{
				Threshold: 85, EnforcementPercentage: 50, MinimumHosts: 5, RequestVolume: 50},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := edsCluster(clusterv3.Cluster_ROUND_ROBIN, nil)
			tt.edit(c)
			got, err := decodeCluster(onWire[wclusterv3.Cluster](t, c))
			if err != nil {
				t.Fatal(err)
			}
			if got.policy.CircuitBreaker != tt.breaker || !reflect.DeepEqual(got.policy.Outlier, tt.outlier) {
				t.Fatalf("got %+v %+v, want %+v %+v", got.policy.CircuitBreaker, got.policy.Outlier, tt.breaker, tt.outlier)
			}
		})
	}
}
