package proxy

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-dev/ballast/internal/policytest"
	"github.com/ballast-dev/ballast/policy"
	"github.com/ballast-dev/ballast/xds/client"
)

// staticRoutes is Options.XDS fed by the test: every watch gets the
// Update last set (none until set is called).
type staticRoutes struct {
	mu  sync.Mutex
	u   *client.Update
	fns map[int]func(client.Update)
	n   int
}

func (s *staticRoutes) Watch(_ string, fn func(client.Update)) func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fns == nil {
		s.fns = map[int]func(client.Update){}
	}
	id := s.n
	s.n++
	s.fns[id] = fn
	if s.u != nil {
		fn(*s.u)
	}
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.fns, id)
	}
}

func (s *staticRoutes) set(u client.Update) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.u = &u
	for _, fn := range s.fns {
		fn(u)
	}
}

// update is the Update of route over clusters, each served by the
// backends at its addresses (round robin).
func update(route policy.Route, clusters map[string][]string) client.Update {
	u := client.Update{Route: route, Clusters: map[string]policy.Cluster{}, Endpoints: map[string]policy.Endpoints{}}
	for name, addrs := range clusters {
		u.Clusters[name] = policy.Cluster{Name: name, LB: policy.RoundRobin}
		e := policy.Endpoints{Cluster: name}
		for _, a := range addrs {
			e.Endpoints = append(e.Endpoints, policy.Endpoint{Address: netip.MustParseAddrPort(a)})
		}
		u.Endpoints[name] = e
	}
	return u
}

// startEchoBackend is policytest.StartEcho with its address as the
// proxy's tests write addresses.
func startEchoBackend(t testing.TB, name string) string {
	return policytest.StartEcho(t, name).String()
}

const routeTarget = "xds:///greeter.default:50051"

// startRouted runs a proxy whose upstream routes is fed u, and returns a
// client connection through it.
func startRouted(t *testing.T, u client.Update) (*grpc.ClientConn, *runningProxy, *staticRoutes) {
	t.Helper()
	routes := &staticRoutes{}
	routes.set(u)
	p, addr := startOutbound(t, routeTarget, Options{XDS: routes})
	return dial(t, addr), p, routes
}

func exactPath(p string) policy.StringMatch {
	return policy.StringMatch{Type: policy.Exact, Value: p}
}

// TestRouteWeights: a 90/10 canary lands within ±2% over 10,000 calls, and
// a backend of weight 0 gets none.
func TestRouteWeights(t *testing.T) {
	route := policy.Route{Name: "greeter", Rules: []policy.Rule{{Backends: []policy.Backend{
		{Cluster: "v1", Weight: 90}, {Cluster: "v2", Weight: 10}, {Cluster: "off", Weight: 0},
	}}}}
	conn, _, _ := startRouted(t, update(route, map[string][]string{
		"v1": {startEchoBackend(t, "v1")}, "v2": {startEchoBackend(t, "v2")}, "off": {startEchoBackend(t, "off")},
	}))
	const calls, workers = 10000, 8
	var mu sync.Mutex
	counts := map[string]int{}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			mine := map[string]int{}
			for range calls / workers {
				hdr, err := policytest.Echo(t.Context(), conn, "/helloworld.Greeter/SayHello")
				if err != nil {
					t.Errorf("call: %v", err)
					return
				}
				mine[strings.Join(hdr.Get("x-backend"), ",")]++
			}
			mu.Lock()
			defer mu.Unlock()
			for k, v := range mine {
				counts[k] += v
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if v2 := counts["v2"]; v2 < 800 || v2 > 1200 || counts["v1"]+v2 != calls {
		t.Fatalf("%v of %d calls, want v2 at 10%% ±2%% (800..1200), the rest on v1", counts, calls)
	}
}

// TestRouteMatches: method (exact, regular expression) and header matches
// pick the rule, the first match wins, headers are ANDed.
func TestRouteMatches(t *testing.T) {
	route := policy.Route{Name: "greeter", Rules: []policy.Rule{
		{Name: "canary-header", Match: policy.Match{
			Path:    exactPath("/helloworld.Greeter/SayHello"),
			Headers: []policy.HeaderMatch{{Name: "x-canary", Value: policy.StringMatch{Type: policy.Exact, Value: "yes"}}, {Name: "x-user", Value: policy.StringMatch{Type: policy.RegularExpression, Value: "ann|bob"}}},
		}, Backends: []policy.Backend{{Cluster: "v2", Weight: 1}}},
		{Name: "ping-any-service", Match: policy.Match{Path: policy.StringMatch{Type: policy.RegularExpression, Value: `/[^/]+/Ping`}}, Backends: []policy.Backend{{Cluster: "ping", Weight: 1}}},
		{Name: "greeter-service", Match: policy.Match{Path: policy.StringMatch{Type: policy.Prefix, Value: "/helloworld.Greeter/"}}, Backends: []policy.Backend{{Cluster: "v1", Weight: 1}}},
	}}
	conn, _, _ := startRouted(t, update(route, map[string][]string{
		"v1": {startEchoBackend(t, "v1")}, "v2": {startEchoBackend(t, "v2")}, "ping": {startEchoBackend(t, "ping")},
	}))
	tests := []struct {
		name, method string
		md           []string
		want         string // backend, or "" for UNAVAILABLE (no rule)
	}{
		{"both headers", "/helloworld.Greeter/SayHello", []string{"x-canary", "yes", "x-user", "bob"}, "v2"},
		{"one header of two", "/helloworld.Greeter/SayHello", []string{"x-canary", "yes"}, "v1"},
		{"header value differs", "/helloworld.Greeter/SayHello", []string{"x-canary", "no", "x-user", "ann"}, "v1"},
		{"regex is whole", "/helloworld.Greeter/SayHello", []string{"x-canary", "yes", "x-user", "anna"}, "v1"},
		{"other method", "/helloworld.Greeter/SayHelloAgain", []string{"x-canary", "yes", "x-user", "ann"}, "v1"},
		{"method regex", "/any.Service/Ping", nil, "ping"},
		{"method regex, greeter", "/helloworld.Greeter/Ping", nil, "ping"},
		{"no rule", "/other.Service/Call", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr, err := policytest.Echo(t.Context(), conn, tt.method, tt.md...)
			if tt.want == "" {
				if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "no route rule matches") {
					t.Fatalf("%s: %v, want UNAVAILABLE saying no rule matches", tt.method, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(hdr.Get("x-backend"), ","); got != tt.want {
				t.Fatalf("%s %v reached %q, want %q", tt.method, tt.md, got, tt.want)
			}
		})
	}
}

// TestRouteMissingBackend: the share of a backend whose Cluster does not
// exist fails with UNAVAILABLE naming it, the rest goes through; a rule
// whose weights sum to 0 fails every call it matches; a Cluster with no
// endpoint (where the control plane sends the share of a backend that
// does not resolve) fails its calls naming it.
func TestRouteMissingBackend(t *testing.T) {
	const unresolved = "greeter.default:50051/unavailable/default/missing:50051"
	route := policy.Route{Name: "greeter", Rules: []policy.Rule{
		{Match: policy.Match{Path: exactPath("/a.B/Zero")}, Backends: []policy.Backend{{Cluster: "v1", Weight: 0}}},
		{Match: policy.Match{Path: exactPath("/a.B/Unresolved")}, Backends: []policy.Backend{{Cluster: unresolved, Weight: 1}}},
		{Backends: []policy.Backend{{Cluster: "v1", Weight: 1}, {Cluster: "gone", Weight: 1}}},
	}}
	conn, _, _ := startRouted(t, update(route, map[string][]string{"v1": {startEchoBackend(t, "v1")}, unresolved: nil}))
	ok, failed := 0, 0
	for range 400 {
		hdr, err := policytest.Echo(t.Context(), conn, "/a.B/C")
		switch {
		case err == nil && hdr.Get("x-backend")[0] == "v1":
			ok++
		case status.Code(err) == codes.Unavailable && strings.Contains(err.Error(), "cluster gone, which does not exist"):
			failed++
		default:
			t.Fatalf("call: %v %v, want v1 or UNAVAILABLE naming cluster gone", hdr, err)
		}
	}
	if ok < 140 || failed < 140 {
		t.Fatalf("%d calls reached v1 and %d failed, want about half each", ok, failed)
	}
	_, err := policytest.Echo(t.Context(), conn, "/a.B/Zero")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "total weight of 0") {
		t.Fatalf("call to a rule of weight 0: %v, want UNAVAILABLE saying so", err)
	}
	_, err = policytest.Echo(t.Context(), conn, "/a.B/Unresolved")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "cluster "+unresolved+", which has no endpoints") {
		t.Fatalf("call to a Cluster with no endpoint: %v, want UNAVAILABLE naming it", err)
	}
}

// TestRouteHeaderModifiers: the rule's request modifier is what the server
// sees (set replaces, add appends, remove deletes), its response modifier
// what the client sees.
func TestRouteHeaderModifiers(t *testing.T) {
	route := policy.Route{Name: "greeter", Rules: []policy.Rule{{
		Backends: []policy.Backend{{Cluster: "v1", Weight: 1}},
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
	}}}
	conn, _, _ := startRouted(t, update(route, map[string][]string{"v1": {startEchoBackend(t, "v1")}}))
	hdr, err := policytest.Echo(t.Context(), conn, "/a.B/C", "x-set", "old", "x-add", "mine", "x-gone", "1", "x-keep", "k", "x-other", "o")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"seen-x-set":   "new",
		"seen-x-add":   "mine,added",
		"seen-x-gone":  "",
		"seen-x-keep":  "", // removed from the response
		"seen-x-other": "o",
		"x-backend":    "renamed",
		"x-resp":       "r",
	}
	for k, v := range want {
		if got := strings.Join(hdr.Get(k), ","); got != v {
			t.Errorf("response header %s = %q, want %q (all: %v)", k, got, v, hdr)
		}
	}
}

// TestRouteUpdates: calls that come before the first route wait for it; a
// route edit moves new calls at once, and the host of a Cluster no route
// names any more goes away.
func TestRouteUpdates(t *testing.T) {
	v1, v2 := startEchoBackend(t, "v1"), startEchoBackend(t, "v2")
	routes := &staticRoutes{}
	p, addr := startOutbound(t, routeTarget, Options{XDS: routes})
	conn := dial(t, addr)
	to := func(cluster string) client.Update {
		return update(policy.RouteTo("greeter", nil, cluster), map[string][]string{"v1": {v1}, "v2": {v2}})
	}
	first := make(chan error, 1)
	go func() {
		hdr, err := policytest.Echo(t.Context(), conn, "/a.B/C")
		if err == nil && hdr.Get("x-backend")[0] != "v1" {
			err = fmt.Errorf("reached %v, want v1", hdr.Get("x-backend"))
		}
		first <- err
	}()
	up, err := p.upstreams.get(routeTarget)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the call waiting for a route", func() bool {
		up.parkMu.Lock()
		defer up.parkMu.Unlock()
		return len(up.waiting) == 1
	})
	routes.set(to("v1"))
	if err := <-first; err != nil {
		t.Fatalf("the call that waited for the route: %v", err)
	}
	// Both clusters exist, so the route edit names a host to keep and one
	// to retire.
	routes.set(to("v2"))
	hdr, err := policytest.Echo(t.Context(), conn, "/a.B/C")
	if err != nil || hdr.Get("x-backend")[0] != "v2" {
		t.Fatalf("after the edit: %v %v, want v2", hdr, err)
	}
	eventually(t, "only v2's host left", func() bool {
		hosts := hostsOf(up)
		up.mu.Lock()
		defer up.mu.Unlock()
		return len(hosts) == 1 && hosts[0].target == "v2" && len(up.retiring) == 0
	})
}
