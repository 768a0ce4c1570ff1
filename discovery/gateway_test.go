package discovery

import (
	"maps"
	"slices"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// A route's hostnames meet a listener's as the Gateway API says: none on
// either side admits the other's, a wildcard admits names under it, and
// the narrower name is the one calls use.
func TestIntersectHostnames(t *testing.T) {
	tests := []struct {
		listener string
		route    []gatewayv1.Hostname
		want     []string
	}{
		{"", nil, []string{""}},
		{"foo.example.com", nil, []string{"foo.example.com"}},
		{"", []gatewayv1.Hostname{"a.com", "*.b.com"}, []string{"a.com", "*.b.com"}},
		{"foo.example.com", []gatewayv1.Hostname{"foo.example.com", "bar.example.com"}, []string{"foo.example.com"}},
		{"*.example.com", []gatewayv1.Hostname{"foo.example.com", "example.com", "a.b.example.com"}, []string{"foo.example.com", "a.b.example.com"}},
		{"foo.example.com", []gatewayv1.Hostname{"*.example.com"}, []string{"foo.example.com"}},
		{"*.example.com", []gatewayv1.Hostname{"*.foo.example.com", "*.example.com"}, []string{"*.foo.example.com", "*.example.com"}},
		{"*.foo.example.com", []gatewayv1.Hostname{"*.example.com"}, []string{"*.foo.example.com"}},
		{"foo.example.com", []gatewayv1.Hostname{"*.example.org"}, nil},
		{"Foo.Example.com", []gatewayv1.Hostname{"foo.example.COM"}, []string{"foo.example.com"}},
	}
	for _, tt := range tests {
		if got := intersectHostnames(tt.listener, tt.route); !slices.Equal(got, tt.want) {
			t.Errorf("listener %q, route %v: %q, want %q", tt.listener, tt.route, got, tt.want)
		}
	}
}

// Routes attach to a Gateway's listeners by parentRef (sectionName,
// port), as the listeners admit them, and their rules are ordered on each
// port by the hostname first: a rule of an exact hostname before one of a
// wildcard, before one of any host.
func TestAttachToGateway(t *testing.T) {
	r := NewRegistry()
	r.Set(&Service{Key: Key{"default", "greeter"}, Ports: []Port{{Name: "grpc", Port: 50051, Protocol: "TCP"}}})
	route := func(ns, name string, hosts []gatewayv1.Hostname, parents ...gatewayv1.ParentReference) {
		r.SetRoute(&gatewayv1.GRPCRoute{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 3},
			Spec: gatewayv1.GRPCRouteSpec{
				CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: parents},
				Hostnames:       hosts,
				Rules: []gatewayv1.GRPCRouteRule{{BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: gatewayv1.BackendRef{
					BackendObjectReference: gatewayv1.BackendObjectReference{Name: "greeter", Namespace: ptrTo(gatewayv1.Namespace("default")), Port: ptrTo(gatewayv1.PortNumber(50051))}}}}}},
			},
		})
	}
	edge := gatewayv1.ParentReference{Name: "edge"}
	section := func(s string) gatewayv1.ParentReference {
		return gatewayv1.ParentReference{Name: "edge", SectionName: ptrTo(gatewayv1.SectionName(s))}
	}
	route("default", "any", nil, edge)
	route("default", "wild", []gatewayv1.Hostname{"*.example.com"}, section("http"))
	route("default", "exact", []gatewayv1.Hostname{"grpc.example.com"}, section("http"))
	route("default", "elsewhere", []gatewayv1.Hostname{"grpc.example.org"}, section("tls"))
	route("default", "no-section", nil, section("nope"))
	route("other", "foreign", nil, gatewayv1.ParentReference{Name: "edge", Namespace: ptrTo(gatewayv1.Namespace("default"))})
	route("default", "mesh", nil, gatewayv1.ParentReference{Name: "greeter", Group: ptrTo(gatewayv1.Group("")), Kind: ptrTo(gatewayv1.Kind("Service"))})

	gw := &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "edge"}}
	same := func(ns string) bool { return ns == "default" }
	att := r.AttachToGateway(gw, []GatewayListener{
		{Name: "http", Port: 80, Allows: same},
		{Name: "tls", Port: 443, Hostname: "*.example.com", Allows: same},
	}, "ballast.dev/gateway")

	if want := map[string]int32{"http": 3, "tls": 1}; !maps.Equal(att.Attached, want) {
		t.Errorf("attached routes %v, want %v", att.Attached, want)
	}
	var hosts80 []string
	for _, rule := range att.Ports[0].Rules {
		hosts80 = append(hosts80, rule.Name+"@"+rule.Match.Hostname)
	}
	if want := []string{"default/exact/rules[0]@grpc.example.com", "default/wild/rules[0]@*.example.com", "default/any/rules[0]@"}; att.Ports[0].Port != 80 || !slices.Equal(hosts80, want) {
		t.Errorf("port %d rules %q, want %q", att.Ports[0].Port, hosts80, want)
	}
	if len(att.Ports) != 2 || att.Ports[1].Port != 443 || len(att.Ports[1].Rules) != 1 || att.Ports[1].Rules[0].Match.Hostname != "*.example.com" {
		t.Errorf("port 443: %+v, want route any with the listener's hostname", att.Ports[1:])
	}
	reasons := map[string]string{}
	for _, rs := range att.Routes {
		for _, p := range rs.Parents {
			if p.ControllerName != "ballast.dev/gateway" || p.Conditions[0].ObservedGeneration != 3 {
				t.Errorf("route %s: parent status %+v", rs.Route.Name, p)
			}
			reasons[rs.Route.Name] = p.Conditions[0].Reason
		}
	}
	want := map[string]string{
		"any": "Accepted", "wild": "Accepted", "exact": "Accepted",
		"elsewhere":  string(gatewayv1.RouteReasonNoMatchingListenerHostname),
		"no-section": string(gatewayv1.RouteReasonNoMatchingParent),
		"foreign":    string(gatewayv1.RouteReasonNotAllowedByListeners),
	}
	if !maps.Equal(reasons, want) {
		t.Errorf("Accepted reasons %v, want %v", reasons, want)
	}
}
