package discovery

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/ballast-dev/ballast/policy"
)

// grpcRoute is a GRPCRoute in namespace default attached to Service
// greeter, with the given spec.rules (YAML).
func grpcRoute(t *testing.T, name, rules string) *gatewayv1.GRPCRoute {
	t.Helper()
	rt := &gatewayv1.GRPCRoute{}
	spec := "parentRefs: [{group: \"\", kind: Service, name: greeter}]\nrules:\n" + rules
	if err := yaml.UnmarshalStrict([]byte(spec), &rt.Spec); err != nil {
		t.Fatalf("route %s: %v", name, err)
	}
	rt.Name, rt.Namespace, rt.Generation = name, "default", 1
	rt.CreationTimestamp = metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	return rt
}

func svcWithPorts(ns, name string, ports ...int32) *Service {
	s := &Service{Key: Key{Namespace: ns, Name: name}}
	for _, p := range ports {
		s.Ports = append(s.Ports, Port{Port: p, Protocol: "TCP"})
	}
	return s
}

var (
	greeter   = Key{"default", "greeter"}
	greeterV2 = Key{"default", "greeter-v2"}
)

func path(t policy.MatchType, v string) policy.Match {
	return policy.Match{Path: policy.StringMatch{Type: t, Value: v}}
}

func to(k Key, w uint32) RouteBackend { return RouteBackend{Service: k, Port: 50051, Weight: w} }

// The MUSTs of grpcroute_types.go, one row each, as the rules the
// registry resolves for the parent Service's port.
func TestRouteSemantics(t *testing.T) {
	tests := []struct {
		name  string
		rules string
		want  []RouteRule
	}{{
		name:  "method Exact service and method: the exact :path",
		rules: "- matches: [{method: {service: helloworld.Greeter, method: SayHello}}]\n  backendRefs: [{name: greeter-v2, port: 50051}]",
		want:  []RouteRule{{Name: "default/r/rules[0]", Match: path(policy.Exact, "/helloworld.Greeter/SayHello"), Backends: []RouteBackend{to(greeterV2, 1)}}},
	}, {
		name:  "method Exact service only: every method of it",
		rules: "- matches: [{method: {service: helloworld.Greeter}}]\n  backendRefs: [{name: greeter-v2, port: 50051}]",
		want:  []RouteRule{{Name: "default/r/rules[0]", Match: path(policy.Prefix, "/helloworld.Greeter/"), Backends: []RouteBackend{to(greeterV2, 1)}}},
	}, {
		name:  "method Exact method only: that method of any service",
		rules: "- matches: [{method: {method: SayHello}}]\n  backendRefs: [{name: greeter-v2, port: 50051}]",
		want:  []RouteRule{{Name: "default/r/rules[0]", Match: path(policy.RegularExpression, "/[^/]+/SayHello"), Backends: []RouteBackend{to(greeterV2, 1)}}},
	}, {
		name:  "method RegularExpression: an anchored RE2 over the path",
		rules: "- matches: [{method: {type: RegularExpression, service: 'helloworld\\..*', method: 'Say.*'}}]\n  backendRefs: [{name: greeter-v2, port: 50051}]",
		want:  []RouteRule{{Name: "default/r/rules[0]", Match: path(policy.RegularExpression, `/(?:helloworld\..*)/(?:Say.*)`), Backends: []RouteBackend{to(greeterV2, 1)}}},
	}, {
		name:  "no matches: every call",
		rules: "- name: all\n  backendRefs: [{name: greeter-v2, port: 50051}]",
		want:  []RouteRule{{Name: "default/r/all", Match: path(policy.Prefix, "/"), Backends: []RouteBackend{to(greeterV2, 1)}}},
	}, {
		name:  "matches are OR'd: one rule per match, in order",
		rules: "- matches: [{method: {service: a.A}}, {method: {service: b.B}}]\n  backendRefs: [{name: greeter-v2, port: 50051}]",
		want: []RouteRule{
			{Name: "default/r/rules[0]", Match: path(policy.Prefix, "/a.A/"), Backends: []RouteBackend{to(greeterV2, 1)}},
			{Name: "default/r/rules[0]", Match: path(policy.Prefix, "/b.B/"), Backends: []RouteBackend{to(greeterV2, 1)}},
		},
	}, {
		name: "headers are AND'd, Exact by default, names lower case, only the first of equivalent names",
		rules: "- matches: [{headers: [{name: Version, value: '2'}, {name: user, type: RegularExpression, value: 'a.*'}, {name: VERSION, value: '3'}]}]\n" +
			"  backendRefs: [{name: greeter-v2, port: 50051}]",
		want: []RouteRule{{Name: "default/r/rules[0]", Match: policy.Match{
			Path: policy.StringMatch{Type: policy.Prefix, Value: "/"},
			Headers: []policy.HeaderMatch{
				{Name: "version", Value: policy.StringMatch{Type: policy.Exact, Value: "2"}},
				{Name: "user", Value: policy.StringMatch{Type: policy.RegularExpression, Value: "a.*"}},
			},
		}, Backends: []RouteBackend{to(greeterV2, 1)}}},
	}, {
		name: "precedence: more characters of service, then of method, then more headers, then rule order",
		rules: "- name: headers\n  matches: [{headers: [{name: a, value: '1'}, {name: b, value: '1'}]}]\n  backendRefs: [{name: greeter, port: 50051}]\n" +
			"- name: first-plain\n  backendRefs: [{name: greeter, port: 50051}]\n" +
			"- name: method\n  matches: [{method: {method: SayHello}}]\n  backendRefs: [{name: greeter, port: 50051}]\n" +
			"- name: short-service\n  matches: [{method: {service: a.B}}]\n  backendRefs: [{name: greeter, port: 50051}]\n" +
			"- name: long-service\n  matches: [{method: {service: helloworld.Greeter}}]\n  backendRefs: [{name: greeter, port: 50051}]\n" +
			"- name: second-plain\n  backendRefs: [{name: greeter, port: 50051}]",
		want: []RouteRule{
			{Name: "default/r/long-service", Match: path(policy.Prefix, "/helloworld.Greeter/"), Backends: []RouteBackend{to(greeter, 1)}},
			{Name: "default/r/short-service", Match: path(policy.Prefix, "/a.B/"), Backends: []RouteBackend{to(greeter, 1)}},
			{Name: "default/r/method", Match: path(policy.RegularExpression, "/[^/]+/SayHello"), Backends: []RouteBackend{to(greeter, 1)}},
			{Name: "default/r/headers", Match: policy.Match{Path: policy.StringMatch{Type: policy.Prefix, Value: "/"}, Headers: []policy.HeaderMatch{
				{Name: "a", Value: policy.StringMatch{Type: policy.Exact, Value: "1"}},
				{Name: "b", Value: policy.StringMatch{Type: policy.Exact, Value: "1"}},
			}}, Backends: []RouteBackend{to(greeter, 1)}},
			{Name: "default/r/first-plain", Match: path(policy.Prefix, "/"), Backends: []RouteBackend{to(greeter, 1)}},
			{Name: "default/r/second-plain", Match: path(policy.Prefix, "/"), Backends: []RouteBackend{to(greeter, 1)}},
		},
	}, {
		name:  "weights: 1 by default, in proportion",
		rules: "- backendRefs: [{name: greeter, port: 50051, weight: 90}, {name: greeter-v2, port: 50051, weight: 10}, {name: greeter, port: 50051}]",
		want:  []RouteRule{{Name: "default/r/rules[0]", Match: path(policy.Prefix, "/"), Backends: []RouteBackend{to(greeter, 90), to(greeterV2, 10), to(greeter, 1)}}},
	}, {
		name:  "weight 0 sends nothing: left out",
		rules: "- backendRefs: [{name: greeter, port: 50051, weight: 1}, {name: greeter-v2, port: 50051, weight: 0}]",
		want:  []RouteRule{{Name: "default/r/rules[0]", Match: path(policy.Prefix, "/"), Backends: []RouteBackend{to(greeter, 1)}}},
	}, {
		name:  "every weight 0: no backend, the calls fail",
		rules: "- backendRefs: [{name: greeter, port: 50051, weight: 0}]",
		want:  []RouteRule{{Name: "default/r/rules[0]", Match: path(policy.Prefix, "/")}},
	}, {
		name:  "no backendRefs: the calls fail",
		rules: "- matches: [{method: {service: a.A}}]",
		want:  []RouteRule{{Name: "default/r/rules[0]", Match: path(policy.Prefix, "/a.A/")}},
	}, {
		name:  "a backend that does not exist keeps its share, unresolved",
		rules: "- backendRefs: [{name: greeter, port: 50051, weight: 9}, {name: gone, port: 50051}]",
		want: []RouteRule{{Name: "default/r/rules[0]", Match: path(policy.Prefix, "/"), Backends: []RouteBackend{to(greeter, 9),
			{Service: Key{"default", "gone"}, Port: 50051, Weight: 1, Unresolved: "Service default/gone does not exist"}}}},
	}, {
		name:  "a backend port the Service does not have is unresolved",
		rules: "- backendRefs: [{name: greeter-v2, port: 9}]",
		want: []RouteRule{{Name: "default/r/rules[0]", Match: path(policy.Prefix, "/"), Backends: []RouteBackend{
			{Service: greeterV2, Port: 9, Weight: 1, Unresolved: "Service default/greeter-v2 has no port 9"}}}},
	}, {
		name:  "a backend in another namespace without a ReferenceGrant is unresolved",
		rules: "- backendRefs: [{name: other, namespace: shop, port: 50051}]",
		want: []RouteRule{{Name: "default/r/rules[0]", Match: path(policy.Prefix, "/"), Backends: []RouteBackend{
			{Service: Key{"shop", "other"}, Port: 50051, Weight: 1, Unresolved: "Service shop/other is in another namespace and no ReferenceGrant there allows it"}}}},
	}, {
		name:  "a backend in another namespace with a ReferenceGrant resolves",
		rules: "- backendRefs: [{name: granted, namespace: shop, port: 50051}]",
		want:  []RouteRule{{Name: "default/r/rules[0]", Match: path(policy.Prefix, "/"), Backends: []RouteBackend{to(Key{"shop", "granted"}, 1)}}},
	}, {
		name:  "a backend that is not a Service is unresolved",
		rules: "- backendRefs: [{group: example.com, kind: Bucket, name: greeter, port: 50051}]",
		want: []RouteRule{{Name: "default/r/rules[0]", Match: path(policy.Prefix, "/"), Backends: []RouteBackend{
			{Service: greeter, Port: 50051, Weight: 1, Unresolved: "backend example.com/Bucket default/greeter is not a Service"}}}},
	}, {
		name: "RequestHeaderModifier and ResponseHeaderModifier, names lower case",
		rules: "- filters:\n  - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Set, value: a}], add: [{name: x-add, value: b}], remove: [X-Drop]}}\n" +
			"  - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-served-by, value: v2}]}}\n" +
			"  backendRefs: [{name: greeter-v2, port: 50051}]",
		want: []RouteRule{{Name: "default/r/rules[0]", Match: path(policy.Prefix, "/"), Backends: []RouteBackend{to(greeterV2, 1)},
			RequestHeaders:  policy.HeaderModifier{Set: []policy.Header{{Name: "x-set", Value: "a"}}, Add: []policy.Header{{Name: "x-add", Value: "b"}}, Remove: []string{"x-drop"}},
			ResponseHeaders: policy.HeaderModifier{Set: []policy.Header{{Name: "x-served-by", Value: "v2"}}},
		}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := newRouteRegistry()
			reg.SetRoute(grpcRoute(t, "r", tt.rules))
			got, _ := reg.Get(greeter)
			pr, ok := got.Route(50051)
			if !ok {
				t.Fatalf("greeter:50051 has no route; routes %+v", got.Routes)
			}
			if diff := cmp.Diff(tt.want, pr.Rules); diff != "" {
				t.Errorf("rules (-want +got):\n%s", diff)
			}
		})
	}
}

// newRouteRegistry holds Services greeter and greeter-v2 (port 50051) in
// default, shop/other and shop/granted, and a ReferenceGrant letting
// default's GRPCRoutes send calls to shop/granted.
func newRouteRegistry() *Registry {
	reg := NewRegistry()
	reg.Set(svcWithPorts("default", "greeter", 50051, 8080))
	reg.Set(svcWithPorts("default", "greeter-v2", 50051))
	reg.Set(svcWithPorts("shop", "other", 50051))
	reg.Set(svcWithPorts("shop", "granted", 50051))
	name := gatewayv1.ObjectName("granted")
	reg.SetGrant(&gatewayv1.ReferenceGrant{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "allow-default"},
		Spec: gatewayv1.ReferenceGrantSpec{
			From: []gatewayv1.ReferenceGrantFrom{{Group: gatewayv1.GroupName, Kind: "GRPCRoute", Namespace: "default"}},
			To:   []gatewayv1.ReferenceGrantTo{{Group: "", Kind: "Service", Name: &name}},
		},
	})
	return reg
}

// Ties across routes go to the older route, then the first by
// namespace/name; a parentRef with a port attaches to that port only; a
// Service without a route has none.
func TestRoutePrecedenceAcrossRoutes(t *testing.T) {
	reg := newRouteRegistry()
	older := grpcRoute(t, "z-older", "- backendRefs: [{name: greeter, port: 50051}]")
	older.CreationTimestamp = metav1.NewTime(older.CreationTimestamp.Add(-time.Hour))
	b := grpcRoute(t, "b", "- backendRefs: [{name: greeter, port: 50051}]")
	a := grpcRoute(t, "a", "- backendRefs: [{name: greeter, port: 50051}]")
	port := int32(50051)
	a.Spec.ParentRefs[0].Port = &port
	for _, rt := range []*gatewayv1.GRPCRoute{b, a, older} {
		reg.SetRoute(rt)
	}
	svc, _ := reg.Get(greeter)
	pr, _ := svc.Route(50051)
	var names []string
	for _, r := range pr.Rules {
		names = append(names, r.Name)
	}
	if want := []string{"default/z-older/rules[0]", "default/a/rules[0]", "default/b/rules[0]"}; !cmp.Equal(names, want) {
		t.Errorf("rule order %v, want %v", names, want)
	}
	other, _ := svc.Route(8080)
	if len(other.Rules) != 2 {
		t.Errorf("port 8080: %d rules, want the 2 of the routes without a port", len(other.Rules))
	}
	if v2, _ := reg.Get(greeterV2); len(v2.Routes) != 0 {
		t.Errorf("greeter-v2 has no route attached, got %+v", v2.Routes)
	}
}

// A backend that appears later is resolved then; one that goes is
// unresolved again; a route that goes takes its rules with it.
func TestRouteFollowsBackends(t *testing.T) {
	reg := newRouteRegistry()
	reg.SetRoute(grpcRoute(t, "r", "- backendRefs: [{name: later, port: 50051}]"))
	sub := reg.Subscribe()
	defer sub.Close()
	backend := func() RouteBackend {
		svc, _ := reg.Get(greeter)
		pr, _ := svc.Route(50051)
		return pr.Rules[0].Backends[0]
	}
	if b := backend(); b.Unresolved == "" {
		t.Fatalf("backend %+v resolved before its Service exists", b)
	}
	reg.Set(svcWithPorts("default", "later", 50051))
	if b := backend(); b.Unresolved != "" {
		t.Fatalf("backend %+v unresolved after its Service appeared", b)
	}
	if keys := sub.Drain(); !cmp.Equal(keys, []Key{greeter, {"default", "later"}}) {
		t.Errorf("changed %v, want the parent and the new Service", keys)
	}
	reg.Delete(Key{"default", "later"})
	if b := backend(); b.Unresolved == "" {
		t.Fatalf("backend %+v resolved after its Service went", b)
	}
	reg.DeleteRoute(Key{"default", "r"})
	if svc, _ := reg.Get(greeter); len(svc.Routes) != 0 {
		t.Errorf("routes %+v after the route was deleted", svc.Routes)
	}
}

// An invalid route is not served: the last good version stays, and its
// status says why, naming the route, the rule and the field.
func TestInvalidRouteKeepsLastGood(t *testing.T) {
	tests := []struct {
		name, rules, wantErr string
	}{
		{"method regular expression", "- name: bad\n  matches: [{method: {type: RegularExpression, service: '(a'}}]", "rule 0 (bad): spec.rules[0].matches[0].method: service: invalid regular expression"},
		{"header regular expression", "- matches: [{headers: [{name: x, type: RegularExpression, value: '[z'}]}]", "rule 0: spec.rules[0].matches[0].headers[0].value: invalid regular expression"},
		{"header gRPC cannot match", "- matches: [{headers: [{name: grpc-timeout, value: '1S'}]}]", "rule 0: spec.rules[0].matches[0].headers[0].name"},
		{"unsupported filter", "- filters: [{type: RequestMirror, requestMirror: {backendRef: {name: greeter, port: 50051}}}]", "rule 0: spec.rules[0].filters[0].type: filter \"RequestMirror\" is not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := newRouteRegistry()
			good := grpcRoute(t, "r", "- backendRefs: [{name: greeter-v2, port: 50051}]")
			reg.SetRoute(good)
			bad := grpcRoute(t, "r", tt.rules)
			bad.Generation = 2
			reg.SetRoute(bad)
			svc, _ := reg.Get(greeter)
			pr, _ := svc.Route(50051)
			if len(pr.Rules) != 1 || pr.Rules[0].Backends[0] != to(greeterV2, 1) {
				t.Errorf("served %+v, want the last good route", pr.Rules)
			}
			_, parents, _ := reg.RouteStatus(Key{"default", "r"})
			accepted := parents[0].Conditions[0]
			if accepted.Status != metav1.ConditionFalse || accepted.Reason != "UnsupportedValue" || accepted.ObservedGeneration != 2 ||
				!strings.Contains(accepted.Message, "grpcroute default/r: "+tt.wantErr) || !strings.Contains(accepted.Message, "clients keep generation 1") {
				t.Errorf("Accepted %+v, want False, UnsupportedValue, generation 2, message naming %q", accepted, tt.wantErr)
			}
		})
	}
}

// Status: Accepted and ResolvedRefs with the spec's reasons, per Service
// parentRef, a message naming the rule; capabilities some modes lack are
// said in Accepted's message.
func TestRouteStatus(t *testing.T) {
	tests := []struct {
		name, rules                  string
		parent                       string
		accepted, resolved           metav1.ConditionStatus
		acceptedReason, resolvedWhy  string
		acceptedMsg, resolvedMessage string
	}{
		{name: "all good", rules: "- backendRefs: [{name: greeter-v2, port: 50051}]",
			accepted: "True", acceptedReason: "Accepted", resolved: "True", resolvedWhy: "ResolvedRefs"},
		{name: "missing backend", rules: "- name: canary\n  backendRefs: [{name: greeter, port: 50051}, {name: gone, port: 50051}]",
			accepted: "True", acceptedReason: "Accepted", resolved: "False", resolvedWhy: "BackendNotFound",
			resolvedMessage: "rule 0 (canary): backendRefs[1]: Service default/gone does not exist"},
		{name: "not permitted", rules: "- backendRefs: [{name: other, namespace: shop, port: 50051}]",
			accepted: "True", acceptedReason: "Accepted", resolved: "False", resolvedWhy: "RefNotPermitted", resolvedMessage: "rule 0: backendRefs[0]"},
		{name: "invalid kind", rules: "- backendRefs: [{group: example.com, kind: Bucket, name: b}]",
			accepted: "True", acceptedReason: "Accepted", resolved: "False", resolvedWhy: "InvalidKind"},
		{name: "weight sum 0", rules: "- name: drain\n  backendRefs: [{name: greeter, port: 50051, weight: 0}]",
			accepted: "True", acceptedReason: "Accepted", acceptedMsg: "rule 0 (drain) of default/r: no backendRef has a weight above 0", resolved: "True", resolvedWhy: "ResolvedRefs"},
		{name: "header modifier: proxyless cannot", rules: "- name: hdr\n  filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x, value: y}]}}]\n  backendRefs: [{name: greeter, port: 50051}]",
			accepted: "True", acceptedReason: "Accepted", acceptedMsg: "rule 0 (hdr): RequestHeaderModifier is not applied by proxyless clients", resolved: "True", resolvedWhy: "ResolvedRefs"},
		{name: "parent does not exist", parent: "nowhere", rules: "- backendRefs: [{name: greeter, port: 50051}]",
			accepted: "False", acceptedReason: "NoMatchingParent", acceptedMsg: "parent Service default/nowhere does not exist", resolved: "True", resolvedWhy: "ResolvedRefs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := newRouteRegistry()
			rt := grpcRoute(t, "r", tt.rules)
			if tt.parent != "" {
				rt.Spec.ParentRefs[0].Name = gatewayv1.ObjectName(tt.parent)
			}
			rt.Spec.ParentRefs = append(rt.Spec.ParentRefs, gatewayv1.ParentReference{Name: "some-gateway"}) // another controller's
			reg.SetRoute(rt)
			_, parents, ok := reg.RouteStatus(Key{"default", "r"})
			if !ok || len(parents) != 1 {
				t.Fatalf("status %+v, want one parent (the Service)", parents)
			}
			p := parents[0]
			if p.ControllerName != ControllerName || string(p.ParentRef.Name) != cmpOr(tt.parent, "greeter") {
				t.Errorf("parent %+v", p)
			}
			acc, res := p.Conditions[0], p.Conditions[1]
			if acc.Type != "Accepted" || acc.Status != tt.accepted || acc.Reason != tt.acceptedReason || !strings.Contains(acc.Message, tt.acceptedMsg) || acc.ObservedGeneration != 1 {
				t.Errorf("Accepted %+v, want %s %s %q", acc, tt.accepted, tt.acceptedReason, tt.acceptedMsg)
			}
			if res.Type != "ResolvedRefs" || res.Status != tt.resolved || res.Reason != tt.resolvedWhy || !strings.Contains(res.Message, tt.resolvedMessage) {
				t.Errorf("ResolvedRefs %+v, want %s %s %q", res, tt.resolved, tt.resolvedWhy, tt.resolvedMessage)
			}
		})
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// A route stored before its parent, sending calls to the parent itself,
// resolves when the parent arrives.
func TestRouteToItsOwnServiceBeforeIt(t *testing.T) {
	reg := NewRegistry()
	reg.SetRoute(grpcRoute(t, "r", "- backendRefs: [{name: greeter, port: 50051}]"))
	reg.Set(svcWithPorts("default", "greeter", 50051))
	svc, _ := reg.Get(greeter)
	pr, ok := svc.Route(50051)
	if !ok || len(pr.Rules) != 1 || pr.Rules[0].Backends[0] != to(greeter, 1) {
		t.Errorf("route %+v, want every call to greeter itself, resolved", pr)
	}
}
