package discovery

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestPreferred(t *testing.T) {
	ep := func(addr, zone string, ready, terminating bool) Endpoint {
		return Endpoint{Address: ap(addr), Zone: zone, Ready: ready, Serving: ready || terminating, Terminating: terminating}
	}
	var (
		a1      = ep("10.0.0.1:80", "a", true, false)
		a2      = ep("10.0.0.2:80", "a", true, false)
		b1      = ep("10.0.1.1:80", "b", true, false)
		b2      = ep("10.0.1.2:80", "b", true, false)
		aDown   = ep("10.0.0.3:80", "a", false, false) // not ready
		aGoing  = ep("10.0.0.4:80", "a", false, true)  // draining
		bDown   = ep("10.0.1.3:80", "b", false, false)
		noZone  = ep("10.0.2.1:80", "", true, false)
		mixed   = []Endpoint{a1, a2, b1, b2}
		aFailed = []Endpoint{aDown, aGoing, b1, b2}
	)
	for _, tc := range []struct {
		name      string
		eps       []Endpoint
		td, zone  string
		use, rest []Endpoint
	}{
		{"own zone first", mixed, PreferSameZone, "a", []Endpoint{a1, a2}, []Endpoint{b1, b2}},
		{"PreferClose is PreferSameZone", mixed, PreferClose, "b", []Endpoint{b1, b2}, []Endpoint{a1, a2}},
		{"PreferSameNode is PreferSameZone", mixed, PreferSameNode, "a", []Endpoint{a1, a2}, []Endpoint{b1, b2}},
		{"no trafficDistribution: every routable one", mixed, "", "a", mixed, nil},
		{"an unknown trafficDistribution asks for nothing", mixed, "PreferNearby", "a", mixed, nil},
		{"a client without a zone: every routable one", mixed, PreferSameZone, "", mixed, nil},
		{"own zone with none routable: the other zones", aFailed, PreferSameZone, "a", []Endpoint{b1, b2}, nil},
		{"a zone with no endpoints: every routable one", mixed, PreferSameZone, "c", mixed, nil},
		{"endpoints without a zone are another zone", []Endpoint{a1, noZone}, PreferSameZone, "a", []Endpoint{a1}, []Endpoint{noZone}},
		{"not ready in own zone, ready elsewhere: the ready ones", []Endpoint{aDown, b1}, PreferSameZone, "a", []Endpoint{b1}, nil},
		{"none ready anywhere: own zone's not-ready ones (panic routing, then zone)", []Endpoint{aDown, aGoing, bDown}, PreferSameZone, "a",
			[]Endpoint{aDown}, []Endpoint{bDown}},
		{"nothing routable", []Endpoint{aGoing}, PreferSameZone, "a", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			use, rest := Preferred(tc.eps, tc.td, tc.zone)
			if diff := cmp.Diff(tc.use, use, addrComparers); diff != "" {
				t.Errorf("use (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.rest, rest, addrComparers); diff != "" {
				t.Errorf("rest (-want +got):\n%s", diff)
			}
		})
	}
}

func TestServiceZones(t *testing.T) {
	svc := &Service{Ports: []Port{
		{Port: 80, Endpoints: []Endpoint{{Zone: "b"}, {Zone: ""}, {Zone: "a"}}},
		{Port: 81, Endpoints: []Endpoint{{Zone: "b"}, {Zone: "c"}}},
	}}
	if got, want := svc.Zones(), []string{"a", "b", "c"}; !cmp.Equal(got, want) {
		t.Errorf("Zones() = %v, want %v", got, want)
	}
}
