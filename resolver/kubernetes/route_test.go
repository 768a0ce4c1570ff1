package kubernetes_test

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/greeter/greetertest"
	"github.com/ballast-dev/ballast/internal/policytest"
	"github.com/ballast-dev/ballast/policy"
	"github.com/ballast-dev/ballast/resolver/kubernetes"
)

// staticRoutes are the routes of Service ports, set by the test.
type staticRoutes struct {
	mu     sync.Mutex
	routes map[discovery.Key]policy.Route
}

func (s *staticRoutes) Route(k discovery.Key, port int32) (policy.Route, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.routes[k]
	return r, ok && port == 50051
}

func (s *staticRoutes) set(k discovery.Key, r policy.Route) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.routes == nil {
		s.routes = map[discovery.Key]policy.Route{}
	}
	s.routes[k] = r
}

// service is Service default/name, port 50051 served by addrs.
func service(name string, addrs ...netip.AddrPort) *discovery.Service {
	p := discovery.Port{Name: "grpc", Port: 50051, Protocol: "TCP"}
	for _, a := range addrs {
		p.Endpoints = append(p.Endpoints, discovery.Endpoint{Address: a, Ready: true, Serving: true})
	}
	return &discovery.Service{Key: discovery.Key{Namespace: "default", Name: name}, Ports: []discovery.Port{p}}
}

// cluster names a Service's port as the control plane names Clusters.
func cluster(name string) string { return name + ".default.svc.cluster.local:50051" }

func dialRouted(t *testing.T, reg *discovery.Registry, routes kubernetes.Routes) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(target, grpc.WithResolvers(kubernetes.NewBuilder(reg, kubernetes.WithRoutes(routes))), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestRouteCanary: a 90/10 split between two Services lands within ±2%
// over 10,000 calls, each Service balanced over its own pods.
func TestRouteCanary(t *testing.T) {
	v1 := []*greetertest.Pod{greetertest.Start(t, "v1-0", greetertest.Options{}), greetertest.Start(t, "v1-1", greetertest.Options{})}
	v2 := greetertest.Start(t, "v2-0", greetertest.Options{})
	reg := discovery.NewRegistry()
	reg.Set(service("greeter", v1[0].Addr, v1[1].Addr))
	reg.Set(service("greeter-v2", v2.Addr))
	routes := &staticRoutes{}
	routes.set(greeterKey, policy.Route{Name: "greeter", Rules: []policy.Rule{{Backends: []policy.Backend{
		{Cluster: cluster("greeter"), Weight: 90}, {Cluster: cluster("greeter-v2"), Weight: 10},
	}}}})
	conn := dialRouted(t, reg, routes)
	counts := greetertest.Spread(t, conn, 10000, 8)
	v1Calls := counts["v1-0"] + counts["v1-1"]
	if v2Calls := counts["v2-0"]; v2Calls < 800 || v2Calls > 1200 || v1Calls+v2Calls != 10000 {
		t.Fatalf("calls by pod %v, want v2-0 at 10%% ±2%% (800..1200), the rest on v1", counts)
	}
	// Round robin from the moment both are connected; the first calls
	// may all go to the one that connected first.
	if min(counts["v1-0"], counts["v1-1"]) < v1Calls*4/10 {
		t.Fatalf("calls by pod %v, want greeter's share spread over both its pods", counts)
	}
}

// TestRouteMatches: the method and the outgoing metadata pick the rule,
// first match wins; a backend Service that does not exist fails its share
// with UNAVAILABLE naming it; a call no rule matches fails UNAVAILABLE; a
// rule's request Set and Add headers reach the server.
func TestRouteMatches(t *testing.T) {
	reg := discovery.NewRegistry()
	reg.Set(service("greeter", policytest.StartEcho(t, "v1")))
	reg.Set(service("greeter-v2", policytest.StartEcho(t, "v2")))
	routes := &staticRoutes{}
	routes.set(greeterKey, policy.Route{Name: "greeter", Rules: []policy.Rule{
		{Match: policy.Match{
			Path:    policy.StringMatch{Type: policy.Exact, Value: "/helloworld.Greeter/SayHello"},
			Headers: []policy.HeaderMatch{{Name: "x-canary", Value: policy.StringMatch{Type: policy.RegularExpression, Value: "yes|true"}}},
		}, Backends: []policy.Backend{{Cluster: cluster("greeter-v2"), Weight: 1}}, RequestHeaders: policy.HeaderModifier{
			Set: []policy.Header{{Name: "x-route", Value: "canary"}},
			Add: []policy.Header{{Name: "x-add", Value: "added"}},
		}},
		{Match: policy.Match{Path: policy.StringMatch{Type: policy.RegularExpression, Value: `/[^/]+/Gone`}}, Backends: []policy.Backend{{Cluster: cluster("missing"), Weight: 1}}},
		{Match: policy.Match{Path: policy.StringMatch{Type: policy.Prefix, Value: "/helloworld.Greeter/"}}, Backends: []policy.Backend{{Cluster: cluster("greeter"), Weight: 1}}},
	}})
	conn := dialRouted(t, reg, routes)
	tests := []struct {
		name, method string
		md           []string
		want         string // backend, or the UNAVAILABLE message
	}{
		{"header match", "/helloworld.Greeter/SayHello", []string{"x-canary", "true"}, "v2"},
		{"header regex is whole", "/helloworld.Greeter/SayHello", []string{"x-canary", "yess"}, "v1"},
		{"other method", "/helloworld.Greeter/SayBye", []string{"x-canary", "yes"}, "v1"},
		{"missing backend", "/any.Service/Gone", nil, "cluster missing.default.svc.cluster.local:50051, which does not exist"},
		{"no rule", "/other.Service/Call", nil, "no route rule matches"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr, err := policytest.Echo(context.Background(), conn, tt.method, tt.md...)
			if strings.HasPrefix(tt.want, "v") {
				if err != nil {
					t.Fatal(err)
				}
				if got := strings.Join(hdr.Get("x-backend"), ","); got != tt.want {
					t.Fatalf("%s %v reached %q, want %q", tt.method, tt.md, got, tt.want)
				}
				return
			}
			if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("%s: %v, want UNAVAILABLE saying %q", tt.method, err, tt.want)
			}
		})
	}
	hdr, err := policytest.Echo(context.Background(), conn, "/helloworld.Greeter/SayHello", "x-canary", "yes", "x-add", "mine")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(hdr.Get("seen-x-route"), ","), "canary"; got != want {
		t.Errorf("the server saw x-route %q, want %q", got, want)
	}
	if got, want := strings.Join(hdr.Get("seen-x-add"), ","), "mine,added"; got != want {
		t.Errorf("the server saw x-add %q, want %q", got, want)
	}
}

// TestRouteEdit: a route that appears, changes or goes is read on the
// registry's next change to the Service; calls follow it.
func TestRouteEdit(t *testing.T) {
	reg := discovery.NewRegistry()
	v1, v2 := policytest.StartEcho(t, "v1"), policytest.StartEcho(t, "v2")
	reg.Set(service("greeter", v1))
	reg.Set(service("greeter-v2", v2))
	routes := &staticRoutes{}
	conn := dialRouted(t, reg, routes)
	reaches := func(want string) func() bool {
		return func() bool {
			hdr, err := policytest.Echo(context.Background(), conn, "/helloworld.Greeter/SayHello")
			return err == nil && strings.Join(hdr.Get("x-backend"), ",") == want
		}
	}
	if !reaches("v1")() {
		t.Fatal("without a route, calls do not reach the Service's own pods")
	}
	routes.set(greeterKey, policy.Route{Name: "greeter", Rules: []policy.Rule{{Backends: []policy.Backend{{Cluster: cluster("greeter-v2"), Weight: 1}}}}})
	reg.Set(service("greeter", v1, netip.MustParseAddrPort("127.0.0.1:1"))) // a change the resolver hears
	greetertest.Eventually(t, 10*time.Second, reaches("v2"), "calls did not move to greeter-v2")
	// A change to a backend Service is heard too: greeter-v2 moves to v1's
	// address.
	reg.Set(service("greeter-v2", v1))
	greetertest.Eventually(t, 10*time.Second, reaches("v1"), "calls did not follow greeter-v2's endpoints")
}

// TestRouteFilters: through DialOptions a rule's request filter sets
// (replacing the app's value), adds and removes headers before the call
// leaves, and its response filter changes the headers the app reads, on
// unary calls and streams. The filter's headers do not re-route the call.
func TestRouteFilters(t *testing.T) {
	reg := discovery.NewRegistry()
	reg.Set(service("greeter", policytest.StartEcho(t, "v1")))
	reg.Set(service("greeter-v2", policytest.StartEcho(t, "v2")))
	routes := &staticRoutes{}
	routes.set(greeterKey, policy.Route{Name: "greeter", Rules: []policy.Rule{
		{
			Match:    policy.Match{Headers: []policy.HeaderMatch{{Name: "x-set", Value: policy.StringMatch{Type: policy.Exact, Value: "new"}}}},
			Backends: []policy.Backend{{Cluster: cluster("greeter-v2"), Weight: 1}},
		},
		{
			Backends: []policy.Backend{{Cluster: cluster("greeter"), Weight: 1}},
			RequestHeaders: policy.HeaderModifier{
				Set:    []policy.Header{{Name: "x-set", Value: "new"}},
				Add:    []policy.Header{{Name: "x-add", Value: "added"}},
				Remove: []string{"x-gone"},
			},
			ResponseHeaders: policy.HeaderModifier{
				Set:    []policy.Header{{Name: "x-backend", Value: "renamed"}},
				Add:    []policy.Header{{Name: "x-resp", Value: "r"}},
				Remove: []string{"seen-x-keep"},
			},
		},
	}})
	conn, err := grpc.NewClient(target, append(kubernetes.DialOptions(reg, kubernetes.WithRoutes(routes)), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	md := []string{"x-set", "old", "x-add", "mine", "x-gone", "1", "x-keep", "k", "x-other", "o"}
	want := map[string]string{
		"seen-x-set":   "new",
		"seen-x-add":   "mine,added",
		"seen-x-gone":  "",
		"seen-x-keep":  "", // removed from the response
		"seen-x-other": "o",
		"x-backend":    "renamed", // v1 (the filter's x-set does not re-route), renamed
		"x-resp":       "r",
	}
	check := func(what string, hdr metadata.MD) {
		for k, v := range want {
			if got := strings.Join(hdr.Get(k), ","); got != v {
				t.Errorf("%s: response header %s = %q, want %q (all: %v)", what, k, got, v, hdr)
			}
		}
	}
	hdr, err := policytest.Echo(context.Background(), conn, "/a.B/C", md...)
	if err != nil {
		t.Fatal(err)
	}
	check("unary", hdr)

	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), md...), 5*time.Second)
	defer cancel()
	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, "/a.B/Stream")
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.SendMsg(&emptypb.Empty{}); err != nil {
		t.Fatal(err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if err := stream.RecvMsg(&emptypb.Empty{}); err != nil {
		t.Fatal(err)
	}
	hdr, err = stream.Header()
	if err != nil {
		t.Fatal(err)
	}
	check("stream", hdr)
}

// TestRegistryGRPCRoute: the GRPCRoutes the registry holds route a
// DialOptions client with no option: a method and header match with its
// filters, the canary split, a backend that does not exist failing its
// share UNAVAILABLE, and an edit that calls follow.
func TestRegistryGRPCRoute(t *testing.T) {
	reg := discovery.NewRegistry()
	reg.Set(service("greeter", policytest.StartEcho(t, "v1")))
	reg.Set(service("greeter-v2", policytest.StartEcho(t, "v2")))
	reg.SetRoute(policytest.GRPCRoute(t, "canary", 1, policytest.CanaryRules))
	conn, err := grpc.NewClient(target, append(kubernetes.DialOptions(reg), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	policytest.CheckRoute(t, conn)

	reg.SetRoute(policytest.GRPCRoute(t, "canary", 2, "- backendRefs: [{name: greeter-v2, port: 50051}]\n"))
	greetertest.Eventually(t, 10*time.Second, func() bool {
		hdr, err := policytest.Echo(context.Background(), conn, "/helloworld.Greeter/SayHello")
		return err == nil && hdr.Get("x-backend")[0] == "v2"
	}, "calls did not follow the route's edit")
}
