package xds

import (
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
	})
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
