package client

import (
	"slices"
	"testing"

	wendpointv3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/config/endpoint/v3"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// A ClusterLoadAssignment's priorities are kept: the usable endpoints are
// the healthy ones of the first priority that has any, as gRPC's priority
// policy uses them (zone preference sends the client's zone at 0).
func TestDecodeEndpointPriorities(t *testing.T) {
	lb := func(addr string, h corev3.HealthStatus) *endpointv3.LbEndpoint {
		return &endpointv3.LbEndpoint{HealthStatus: h, HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 80}}}}}}}
	}
	loc := func(zone string, priority uint32, eps ...*endpointv3.LbEndpoint) *endpointv3.LocalityLbEndpoints {
		return &endpointv3.LocalityLbEndpoints{Locality: &corev3.Locality{Zone: zone}, Priority: priority, LbEndpoints: eps,
			LoadBalancingWeight: wrapperspb.UInt32(uint32(len(eps)))}
	}
	healthy, draining := corev3.HealthStatus_HEALTHY, corev3.HealthStatus_DRAINING
	for _, tc := range []struct {
		name string
		locs []*endpointv3.LocalityLbEndpoints
		want []string
	}{
		{"priority 0", []*endpointv3.LocalityLbEndpoints{
			loc("a", 0, lb("10.0.0.1", healthy), lb("10.0.0.2", draining)),
			loc("b", 1, lb("10.0.1.1", healthy)),
		}, []string{"10.0.0.1:80"}},
		{"priority 0 has none healthy: priority 1", []*endpointv3.LocalityLbEndpoints{
			loc("a", 0, lb("10.0.0.2", draining)),
			loc("b", 1, lb("10.0.1.1", healthy)), loc("c", 1, lb("10.0.2.1", healthy)),
		}, []string{"10.0.1.1:80", "10.0.2.1:80"}},
		{"one priority", []*endpointv3.LocalityLbEndpoints{
			loc("a", 0, lb("10.0.0.1", healthy)), loc("b", 0, lb("10.0.1.1", healthy)),
		}, []string{"10.0.0.1:80", "10.0.1.1:80"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeEndpoints(onWire[wendpointv3.ClusterLoadAssignment](t, &endpointv3.ClusterLoadAssignment{ClusterName: "c", Endpoints: tc.locs}))
			if err != nil {
				t.Fatal(err)
			}
			var usable []string
			for _, e := range got.Usable() {
				usable = append(usable, e.Address.String())
			}
			if !slices.Equal(usable, tc.want) {
				t.Errorf("Usable = %v, want %v", usable, tc.want)
			}
		})
	}
}
