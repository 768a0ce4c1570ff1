package xds

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/policy"
)

// Endpoints as clients get them: ready ones healthy, terminating ones that
// still serve draining, the rest left out, grouped by zone; Usable keeps
// the healthy ones.
func TestEndpointsOf(t *testing.T) {
	ep := func(addr string, ready, serving, terminating bool, zone string) discovery.Endpoint {
		return discovery.Endpoint{Address: netip.MustParseAddrPort(addr), Ready: ready, Serving: serving, Terminating: terminating, Zone: zone, Pod: addr}
	}
	got := endpointsOf("c", []discovery.Endpoint{
		ep("10.0.0.1:1", true, true, false, "b"),
		ep("10.0.0.2:1", false, true, true, "a"),
		ep("10.0.0.3:1", false, false, true, "a"),
		ep("10.0.0.4:1", false, false, false, "b"),
		ep("10.0.0.5:1", true, true, false, "a"),
	}, "", "b")
	want := policy.Endpoints{Cluster: "c", Endpoints: []policy.Endpoint{
		{Address: netip.MustParseAddrPort("10.0.0.2:1"), Zone: "a", Pod: "10.0.0.2:1", Health: policy.Draining},
		{Address: netip.MustParseAddrPort("10.0.0.5:1"), Zone: "a", Pod: "10.0.0.5:1", Health: policy.Healthy},
		{Address: netip.MustParseAddrPort("10.0.0.1:1"), Zone: "b", Pod: "10.0.0.1:1", Health: policy.Healthy},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("EndpointsOf:\n got %+v\nwant %+v", got, want)
	}
	var usable []string
	for _, e := range got.Usable() {
		usable = append(usable, e.Address.String())
	}
	if strings.Join(usable, " ") != "10.0.0.5:1 10.0.0.1:1" {
		t.Fatalf("Usable = %v, want the two ready endpoints", usable)
	}
}

// A client's zone's endpoints at priority 0 and the other zones' at
// priority 1, when the Service prefers zones and the client's has routable
// ones; every locality of the ClusterLoadAssignment has a weight.
func TestEndpointsOfZone(t *testing.T) {
	ep := func(addr, zone string, ready, terminating bool) discovery.Endpoint {
		return discovery.Endpoint{Address: netip.MustParseAddrPort(addr), Zone: zone, Ready: ready, Serving: ready || terminating, Terminating: terminating}
	}
	eps := []discovery.Endpoint{
		ep("10.0.0.1:1", "a", true, false), ep("10.0.0.2:1", "a", false, true),
		ep("10.0.1.1:1", "b", true, false), ep("10.0.1.2:1", "b", false, true),
		ep("10.0.2.1:1", "c", true, false),
	}
	for _, tc := range []struct {
		name, td, zone string
		want           string // priority/zone=addresses (! draining) per locality
	}{
		{"own zone first", discovery.PreferSameZone, "a", "0/a=10.0.0.1:1 !10.0.0.2:1; 1/b=10.0.1.1:1 !10.0.1.2:1; 1/c=10.0.2.1:1"},
		{"no preference", "", "a", "0/a=10.0.0.1:1 !10.0.0.2:1; 0/b=10.0.1.1:1 !10.0.1.2:1; 0/c=10.0.2.1:1"},
		{"no client zone", discovery.PreferSameZone, "", "0/a=10.0.0.1:1 !10.0.0.2:1; 0/b=10.0.1.1:1 !10.0.1.2:1; 0/c=10.0.2.1:1"},
		{"a zone without endpoints", discovery.PreferClose, "d", "0/a=10.0.0.1:1 !10.0.0.2:1; 0/b=10.0.1.1:1 !10.0.1.2:1; 0/c=10.0.2.1:1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cla := renderEndpoints(endpointsOf("c", eps, tc.td, tc.zone))
			var got []string
			for _, loc := range cla.GetEndpoints() {
				if loc.GetLoadBalancingWeight().GetValue() == 0 {
					t.Errorf("locality %v has weight 0", loc.GetLocality())
				}
				var addrs []string
				for _, e := range loc.GetLbEndpoints() {
					a := e.GetEndpoint().GetAddress().GetSocketAddress()
					mark := ""
					if e.GetHealthStatus().String() == "DRAINING" {
						mark = "!"
					}
					addrs = append(addrs, fmt.Sprintf("%s%s:%d", mark, a.GetAddress(), a.GetPortValue()))
				}
				got = append(got, fmt.Sprintf("%d/%s=%s", loc.GetPriority(), loc.GetLocality().GetZone(), strings.Join(addrs, " ")))
			}
			if g := strings.Join(got, "; "); g != tc.want {
				t.Errorf("localities\n got %s\nwant %s", g, tc.want)
			}
			if err := cla.Validate(); err != nil {
				t.Errorf("invalid ClusterLoadAssignment: %v", err)
			}
		})
	}
}
