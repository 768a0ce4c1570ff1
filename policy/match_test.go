package policy

import (
	"errors"
	"strings"
	"testing"
)

// mapHeaders is a call's headers for tests: values joined as Headers says.
type mapHeaders map[string][]string

func (m mapHeaders) Header(name string) (string, bool) {
	v, ok := m[name]
	return strings.Join(v, ","), ok
}

func exact(v string) StringMatch  { return StringMatch{Type: Exact, Value: v} }
func prefix(v string) StringMatch { return StringMatch{Type: Prefix, Value: v} }
func regex(v string) StringMatch  { return StringMatch{Type: RegularExpression, Value: v} }

func to(cluster string) []Backend { return []Backend{{Cluster: cluster, Weight: 1}} }

// The first rule that selects a call wins; paths and headers compare as
// grpc-go's xDS routing compares them.
func TestRouterMatch(t *testing.T) {
	route := Route{Name: "greeter", Rules: []Rule{
		{Name: "exact-method", Match: Match{Path: exact("/helloworld.Greeter/SayHello")}, Backends: to("a")},
		{Name: "service-regex", Match: Match{Path: regex(`/helloworld\.Greeter/.+`), Headers: []HeaderMatch{{Name: "version", Value: exact("2")}}}, Backends: to("b")},
		{Name: "two-headers", Match: Match{Path: prefix("/"), Headers: []HeaderMatch{{Name: "env", Value: regex("canary|beta")}, {Name: "X-User", Value: prefix("ann")}}}, Backends: to("c")},
		{Name: "method-regex", Match: Match{Path: regex(`/[^/]+/Ping`)}, Backends: to("d")},
		{Name: "content-type", Match: Match{Headers: []HeaderMatch{{Name: "content-type", Value: exact("application/grpc+json")}}}, Backends: to("e")},
		{Name: "rest", Backends: to("f")},
	}}
	rt := NewRouter(route)
	if errs := rt.Errors(); len(errs) > 0 {
		t.Fatalf("errors: %v", errs)
	}
	tests := []struct {
		name    string
		path    string
		headers mapHeaders
		want    string
	}{
		{"exact method", "/helloworld.Greeter/SayHello", nil, "exact-method"},
		{"exact is whole", "/helloworld.Greeter/SayHelloAgain", nil, "rest"},
		{"exact is case sensitive", "/helloworld.greeter/SayHello", nil, "rest"},
		{"regex and header", "/helloworld.Greeter/SayHelloAgain", mapHeaders{"version": {"2"}}, "service-regex"},
		{"regex matches the whole path", "/x/helloworld.Greeter/A", mapHeaders{"version": {"2"}}, "rest"},
		{"header value differs", "/helloworld.Greeter/SayHelloAgain", mapHeaders{"version": {"3"}}, "rest"},
		{"repeated header joined", "/helloworld.Greeter/SayHelloAgain", mapHeaders{"version": {"2", "2"}}, "rest"},
		{"headers are ANDed", "/a.B/C", mapHeaders{"env": {"canary"}}, "rest"},
		{"both headers", "/a.B/C", mapHeaders{"env": {"beta"}, "x-user": {"anna"}}, "two-headers"},
		{"header regex is anchored", "/a.B/C", mapHeaders{"env": {"canary2"}, "x-user": {"anna"}}, "rest"},
		{"method regex", "/any.Service/Ping", nil, "method-regex"},
		{"content-type", "/a.B/C", mapHeaders{"content-type": {"application/grpc+json"}}, "content-type"},
		{"nothing else", "/a.B/C", nil, "rest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			i := rt.Match(tt.path, tt.headers)
			if i < 0 {
				t.Fatalf("no rule matched %s", tt.path)
			}
			if got := rt.Rule(i).Name; got != tt.want {
				t.Fatalf("%s %v matched rule %q, want %q", tt.path, tt.headers, got, tt.want)
			}
		})
	}
}

// A rule's Hostname selects calls by :authority: a name itself, a
// wildcard one label or more in front of its suffix, the port left off,
// case ignored.
func TestRouterHostname(t *testing.T) {
	rt := NewRouter(Route{Name: "gateway", Rules: []Rule{
		{Name: "exact", Match: Match{Hostname: "foo.example.com"}, Backends: to("a")},
		{Name: "wildcard", Match: Match{Hostname: "*.Example.com"}, Backends: to("b")},
		{Name: "any", Backends: to("c")},
	}})
	if !rt.MatchesHeaders() {
		t.Fatal("a router with hostnames does not read headers")
	}
	tests := []struct {
		authority string
		want      string
	}{
		{"foo.example.com", "exact"},
		{"FOO.example.com:8443", "exact"},
		{"bar.example.com", "wildcard"},
		{"a.b.example.com:80", "wildcard"},
		{"example.com", "any"},
		{"fooexample.com", "any"},
		{"[::1]:443", "any"},
		{"", "any"},
	}
	for _, tt := range tests {
		h := mapHeaders{":authority": {tt.authority}}
		if tt.authority == "" {
			h = nil
		}
		if got := rt.Rule(rt.Match("/a.B/C", h)).Name; got != tt.want {
			t.Errorf(":authority %q matched rule %q, want %q", tt.authority, got, tt.want)
		}
	}
}

// A rule that cannot compile matches nothing, is reported by route and
// rule, and leaves the other rules working; a route with no rule for a
// call fails it with ErrNoRule.
func TestRouterErrors(t *testing.T) {
	route := Route{Name: "greeter", Rules: []Rule{
		{Name: "bad-path", Match: Match{Path: regex("(")}, Backends: to("a")},
		{Match: Match{Headers: []HeaderMatch{{Name: "v", Value: regex("[")}}}, Backends: to("b")},
		{Name: "binary", Match: Match{Headers: []HeaderMatch{{Name: "trace-bin", Value: exact("x")}}}, Backends: to("c")},
		{Name: "pseudo", Match: Match{Headers: []HeaderMatch{{Name: ":authority", Value: prefix("")}}}, Backends: to("d")},
		{Name: "timeout", Match: Match{Headers: []HeaderMatch{{Name: "grpc-timeout", Value: prefix("")}}}, Backends: to("e")},
		{Name: "bad-filter", RequestHeaders: HeaderModifier{Set: []Header{{Name: ":path", Value: "/x"}}}, Backends: to("f")},
		{Name: "bad-value", ResponseHeaders: HeaderModifier{Add: []Header{{Name: "x-a", Value: "a\r\nb"}}}, Backends: to("f")},
		{Name: "good", Match: Match{Path: prefix("/a.")}, Backends: to("g")},
	}}
	rt := NewRouter(route)
	var msgs []string
	for _, err := range rt.Errors() {
		msgs = append(msgs, err.Error())
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{
		`route greeter: rule 0 (bad-path): path regular expression "("`,
		`route greeter: rule 1: header v regular expression "["`,
		`rule 2 (binary): header "trace-bin" cannot be matched`,
		`rule 3 (pseudo): header ":authority" cannot be matched`,
		`rule 4 (timeout): header "grpc-timeout" cannot be matched`,
		`rule 5 (bad-filter): request header modifier: ":path"`,
		`rule 6 (bad-value): response header modifier: "x-a: \"a\\r\\nb\""`,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("errors lack %q:\n%s", want, all)
		}
	}
	if len(msgs) != 7 {
		t.Errorf("%d errors, want 7:\n%s", len(msgs), all)
	}
	h := mapHeaders{"v": {"["}, "trace-bin": {"x"}, ":authority": {"a"}, "grpc-timeout": {"1S"}}
	if i, rule, b, err := rt.Decide("/a.B/C", h); err != nil || rule.Name != "good" || b.Cluster != "g" || i != 7 {
		t.Fatalf("Decide = %d %v %v %v, want rule 7 (good) to g", i, rule, b, err)
	}
	if _, _, _, err := rt.Decide("/z.B/C", h); !errors.Is(err, ErrNoRule) {
		t.Fatalf("Decide with no rule: %v, want ErrNoRule", err)
	}
}

// Backends are picked uniformly over the weight sum: a draw below 90 of
// 100 is the first backend's, weight 0 is never picked, and a rule whose
// weights sum to 0 fails with ErrNoWeight.
func TestRouterBackend(t *testing.T) {
	route := Route{Name: "canary", Rules: []Rule{
		{Match: Match{Path: exact("/split")}, Backends: []Backend{{Cluster: "v1", Weight: 90}, {Cluster: "off", Weight: 0}, {Cluster: "v2", Weight: 10}}},
		{Match: Match{Path: exact("/zero")}, Backends: []Backend{{Cluster: "v1", Weight: 0}, {Cluster: "v2", Weight: 0}}},
		{Match: Match{Path: exact("/none")}},
	}}
	rt := NewRouter(route)
	defer func(f func(uint64) uint64) { randUint64N = f }(randUint64N)
	tests := []struct {
		draw uint64
		want string
	}{{0, "v1"}, {89, "v1"}, {90, "v2"}, {99, "v2"}}
	for _, tt := range tests {
		randUint64N = func(n uint64) uint64 {
			if n != 100 {
				t.Fatalf("drawn over %d, want the weight sum 100", n)
			}
			return tt.draw
		}
		if b, err := rt.Backend(0); err != nil || b.Cluster != tt.want {
			t.Errorf("draw %d: %v %v, want %s", tt.draw, b, err, tt.want)
		}
	}
	for _, path := range []string{"/zero", "/none"} {
		if _, _, _, err := rt.Decide(path, mapHeaders{}); !errors.Is(err, ErrNoWeight) {
			t.Errorf("%s: %v, want ErrNoWeight", path, err)
		}
	}
}

// The real draw spreads 90/10 within ±2% over 10,000 picks.
func TestRouterBackendSpread(t *testing.T) {
	rt := NewRouter(Route{Rules: []Rule{{Backends: []Backend{{Cluster: "v1", Weight: 90}, {Cluster: "v2", Weight: 10}}}}})
	counts := map[string]int{}
	for range 10000 {
		b, err := rt.Backend(0)
		if err != nil {
			t.Fatal(err)
		}
		counts[b.Cluster]++
	}
	if v2 := counts["v2"]; v2 < 800 || v2 > 1200 {
		t.Fatalf("v2 got %d of 10000 picks, want 1000±200", v2)
	}
}

// Modifiers come out with names in lower case.
func TestRouterModifiers(t *testing.T) {
	rt := NewRouter(Route{Rules: []Rule{{
		RequestHeaders:  HeaderModifier{Set: []Header{{Name: "X-Set", Value: "1"}}, Add: []Header{{Name: "X-Add", Value: "2"}}, Remove: []string{"X-Gone"}},
		ResponseHeaders: HeaderModifier{Add: []Header{{Name: "X-Resp", Value: "3"}}},
	}}})
	req, resp := rt.RequestHeaders(0), rt.ResponseHeaders(0)
	if req.Set[0].Name != "x-set" || req.Add[0].Name != "x-add" || req.Remove[0] != "x-gone" || resp.Add[0].Name != "x-resp" {
		t.Fatalf("modifiers %+v %+v, want lower-case names", req, resp)
	}
	if !req.Changes("x-set") || !req.Changes("x-gone") || req.Changes("x-add") || resp.Empty() {
		t.Fatalf("Changes/Empty disagree with %+v %+v", req, resp)
	}
}

// BenchmarkRouterDecide is the per-call decision on a 5-rule route whose
// last rule takes the call (the most work a call does): no allocation.
func BenchmarkRouterDecide(b *testing.B) {
	rt := NewRouter(fiveRules())
	h := mapHeaders{"version": {"2"}, "x-user": {"anna"}}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, err := rt.Decide("/helloworld.Greeter/SayHello", h); err != nil {
			b.Fatal(err)
		}
	}
}

func fiveRules() Route {
	return Route{Name: "five", Rules: []Rule{
		{Match: Match{Path: exact("/a.B/C")}, Backends: to("a")},
		{Match: Match{Path: regex(`/other\.Service/.+`)}, Backends: to("b")},
		{Match: Match{Path: prefix("/helloworld.Greeter/"), Headers: []HeaderMatch{{Name: "version", Value: exact("3")}}}, Backends: to("c")},
		{Match: Match{Headers: []HeaderMatch{{Name: "x-user", Value: regex("bob|carl")}}}, Backends: to("d")},
		{Backends: []Backend{{Cluster: "v1", Weight: 90}, {Cluster: "v2", Weight: 10}}},
	}}
}
