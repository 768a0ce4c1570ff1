package route

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	estats "google.golang.org/grpc/experimental/stats"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/status"

	"github.com/ballast-dev/ballast/policy"
)

// namedPicker picks a SubConn standing for its Cluster.
type namedPicker struct{ sc *fakeSubConn }

type fakeSubConn struct {
	balancer.SubConn
	name string
}

func (p namedPicker) Pick(balancer.PickInfo) (balancer.PickResult, error) {
	return balancer.PickResult{SubConn: p.sc}, nil
}

func testPicker() *picker {
	route := policy.Route{Name: "greeter", Rules: []policy.Rule{
		{Match: policy.Match{Headers: []policy.HeaderMatch{{Name: "x-canary", Value: policy.StringMatch{Type: policy.Exact, Value: "yes"}}}},
			Backends:       []policy.Backend{{Cluster: "v2", Weight: 1}},
			RequestHeaders: policy.HeaderModifier{Set: []policy.Header{{Name: "x-route", Value: "canary"}}, Add: []policy.Header{{Name: "x-gone", Value: "1"}}, Remove: []string{"x-gone"}}},
		{Match: policy.Match{Path: policy.StringMatch{Type: policy.Exact, Value: "/a.B/Wait"}}, Backends: []policy.Backend{{Cluster: "starting", Weight: 1}}},
		{Match: policy.Match{Path: policy.StringMatch{Type: policy.Exact, Value: "/a.B/Zero"}}, Backends: []policy.Backend{{Cluster: "v1", Weight: 0}}},
		{Match: policy.Match{Path: policy.StringMatch{Type: policy.Exact, Value: "/a.B/Gone"}}, Backends: []policy.Backend{{Cluster: "missing", Weight: 1}}},
		{Match: policy.Match{Path: policy.StringMatch{Type: policy.Exact, Value: "/a.B/Empty"}}, Backends: []policy.Backend{{Cluster: "scaled-down", Weight: 1}}},
		{Match: policy.Match{Path: policy.StringMatch{Type: policy.Prefix, Value: "/a.B/"}}, Backends: []policy.Backend{{Cluster: "v1", Weight: 1}}},
	}}
	return &picker{router: policy.NewRouter(route), children: map[string]balancer.Picker{
		"v1":          namedPicker{&fakeSubConn{name: "v1"}},
		"v2":          namedPicker{&fakeSubConn{name: "v2"}},
		"starting":    nil,
		"scaled-down": errPicker{unavailable("no children to pick from")},
	}, empty: map[string]bool{"scaled-down": true}}
}

// errNotStatus marks a pick error that is not a status: grpc-go fails
// the call UNAVAILABLE with its text, unless it waits for ready.
var errNotStatus = errors.New("not a status")

// The picker routes by method and outgoing metadata, then the Cluster's
// picker picks; what the route cannot place fails UNAVAILABLE, and a
// Cluster whose balancer has no picker yet makes the call wait.
func TestPick(t *testing.T) {
	p := testPicker()
	canary := metadata.AppendToOutgoingContext(context.Background(), "x-canary", "yes")
	tests := []struct {
		name    string
		ctx     context.Context
		method  string
		want    string // SubConn, or the error's text
		wantErr error
	}{
		{"path", context.Background(), "/a.B/C", "v1", nil},
		{"header", canary, "/a.B/C", "v2", nil},
		{"chosen by the interceptor", context.WithValue(context.Background(), decisionKey{}, decision{router: p.router, rule: 5}), "/a.B/C", "v1", nil},
		{"a decision of another route is not kept", context.WithValue(canary, decisionKey{}, decision{router: policy.NewRouter(policy.Route{}), rule: 5}), "/a.B/C", "v2", nil},
		{"no picker yet", context.Background(), "/a.B/Wait", "", balancer.ErrNoSubConnAvailable},
		{"weight 0", context.Background(), "/a.B/Zero", "total weight of 0", nil},
		{"missing cluster", context.Background(), "/a.B/Gone", "cluster missing, which does not exist", nil},
		{"cluster without endpoints (wait-for-ready calls wait)", context.Background(), "/a.B/Empty", "cluster scaled-down, which has no ready endpoints", errNotStatus},
		{"no rule", context.Background(), "/c.D/E", "no route rule matches", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := p.Pick(balancer.PickInfo{FullMethodName: tt.method, Ctx: tt.ctx})
			switch {
			case tt.wantErr == errNotStatus:
				if _, isStatus := status.FromError(err); err == nil || isStatus || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("Pick: %v, want an error that is not a status, saying %q", err, tt.want)
				}
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Pick: %v, want %v", err, tt.wantErr)
				}
			case err != nil:
				if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("Pick: %v, want UNAVAILABLE saying %q", err, tt.want)
				}
			default:
				if got := res.SubConn.(*fakeSubConn).name; got != tt.want {
					t.Fatalf("picked %s, want %s", got, tt.want)
				}
			}
		})
	}
}

// Without the interceptor, a rule's Set and Add headers (less those it
// removes) go in the pick's metadata; with it, none, as it applied them.
func TestPickHeaders(t *testing.T) {
	p := testPicker()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-canary", "yes")
	res, err := p.Pick(balancer.PickInfo{FullMethodName: "/a.B/C", Ctx: ctx})
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Metadata; len(got) != 1 || strings.Join(got.Get("x-route"), ",") != "canary" {
		t.Fatalf("pick metadata %v, want x-route: canary alone", got)
	}
	res, err = p.Pick(balancer.PickInfo{FullMethodName: "/a.B/C", Ctx: context.WithValue(ctx, decisionKey{}, decision{router: p.router, rule: 0})})
	if err != nil || res.Metadata != nil {
		t.Fatalf("pick after the interceptor: %v %v, want no metadata", res.Metadata, err)
	}
}

// BenchmarkPick is the library's routing per call: the route's decision
// and the Cluster's pick, for a route that reads no header (nothing
// allocated) and one that reads the outgoing metadata.
func BenchmarkPick(b *testing.B) {
	p := testPicker()
	plain := &picker{router: policy.NewRouter(policy.Route{Rules: []policy.Rule{
		{Match: policy.Match{Path: policy.StringMatch{Type: policy.Exact, Value: "/a.B/Other"}}, Backends: []policy.Backend{{Cluster: "v2", Weight: 1}}},
		{Backends: []policy.Backend{{Cluster: "v1", Weight: 90}, {Cluster: "v2", Weight: 10}}},
	}}), children: p.children}
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-user", "ann")
	for _, tc := range []struct {
		name string
		p    *picker
	}{{"paths", plain}, {"headers", p}} {
		b.Run(tc.name, func(b *testing.B) {
			info := balancer.PickInfo{FullMethodName: "/a.B/C", Ctx: ctx}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := tc.p.Pick(info); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// fakeCC is the channel as the policy sees it: it records the states the
// policy reports; SubConns never connect.
type fakeCC struct {
	balancer.ClientConn
	states []balancer.State
}

func (f *fakeCC) NewSubConn([]resolver.Address, balancer.NewSubConnOptions) (balancer.SubConn, error) {
	return &idleSubConn{}, nil
}
func (f *fakeCC) UpdateState(s balancer.State)                         { f.states = append(f.states, s) }
func (f *fakeCC) ResolveNow(resolver.ResolveNowOptions)                {}
func (f *fakeCC) Target() string                                       { return "kubernetes:///greeter.default:50051" }
func (f *fakeCC) MetricsRecorder() estats.MetricsRecorder              { return nil }
func (f *fakeCC) RemoveSubConn(balancer.SubConn)                       {}
func (f *fakeCC) UpdateAddresses(balancer.SubConn, []resolver.Address) {}

type idleSubConn struct{ balancer.SubConn }

func (*idleSubConn) Connect()                                           {}
func (*idleSubConn) Shutdown()                                          {}
func (*idleSubConn) UpdateAddresses([]resolver.Address)                 {}
func (*idleSubConn) RegisterHealthListener(func(balancer.SubConnState)) {}
func (*idleSubConn) GetOrBuildProducer(balancer.ProducerBuilder) (balancer.Producer, func()) {
	return nil, func() {}
}

// Every picker the policy reports knows every Cluster of the route: one
// reported while the Clusters' balancers are being made would fail the
// calls of those not made yet as if they did not exist.
func TestNoPickerWithClustersMissing(t *testing.T) {
	cc := &fakeCC{}
	b := balancer.Get(Name).Build(cc, balancer.BuildOptions{})
	defer b.Close()
	st := &State{
		Route: policy.Route{Name: "greeter", Rules: []policy.Rule{{Backends: []policy.Backend{{Cluster: "v1", Weight: 1}, {Cluster: "v2", Weight: 1}}}}},
		Clusters: map[string]Cluster{
			"v1": {LB: policy.RoundRobin, Endpoints: []resolver.Endpoint{{Addresses: []resolver.Address{{Addr: "127.0.0.1:1"}}}}},
			"v2": {LB: policy.RoundRobin, Endpoints: []resolver.Endpoint{{Addresses: []resolver.Address{{Addr: "127.0.0.1:2"}}}}},
		},
	}
	if err := b.UpdateClientConnState(balancer.ClientConnState{ResolverState: WithState(resolver.State{}, st)}); err != nil {
		t.Fatal(err)
	}
	if len(cc.states) == 0 {
		t.Fatal("no picker reported")
	}
	for i, s := range cc.states {
		p := s.Picker.(*picker)
		if _, ok := p.children["v1"]; !ok {
			t.Errorf("picker %d lacks v1", i)
		}
		if _, ok := p.children["v2"]; !ok {
			t.Errorf("picker %d lacks v2", i)
		}
	}
}
