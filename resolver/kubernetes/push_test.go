package kubernetes

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/policy"
)

// fakeCC records what a resolver sends.
type fakeCC struct {
	resolver.ClientConn
	updates chan resolver.State
	errs    chan error
	configs chan string // service configs given to ParseServiceConfig
}

func newFakeCC() *fakeCC {
	return &fakeCC{updates: make(chan resolver.State, 16), errs: make(chan error, 16), configs: make(chan string, 16)}
}

func (f *fakeCC) ParseServiceConfig(js string) *serviceconfig.ParseResult {
	f.configs <- js
	return &serviceconfig.ParseResult{}
}

func (f *fakeCC) UpdateState(s resolver.State) error { f.updates <- s; return nil }
func (f *fakeCC) ReportError(err error)              { f.errs <- err }

func (f *fakeCC) nextState(t *testing.T) resolver.State {
	t.Helper()
	select {
	case s := <-f.updates:
		return s
	case err := <-f.errs:
		t.Fatalf("resolver reported %v, want a state", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no state from the resolver")
	}
	return resolver.State{}
}

// quiet checks nothing is pending. Everything the resolver does is in
// response to a registry change it has already handled when the next
// state arrives, so a later state proves the earlier change sent nothing.
func (f *fakeCC) quiet(t *testing.T) {
	t.Helper()
	select {
	case s := <-f.updates:
		t.Fatalf("unexpected state %+v", s)
	case err := <-f.errs:
		t.Fatalf("unexpected error %v", err)
	default:
	}
}

func addrsOf(s resolver.State) []string {
	var out []string
	for _, ep := range s.Endpoints {
		out = append(out, ep.Addresses[0].Addr)
	}
	return out
}

func svc(eps ...discovery.Endpoint) *discovery.Service {
	return &discovery.Service{Key: discovery.Key{Namespace: "shop", Name: "greeter"},
		Ports: []discovery.Port{{Name: "grpc", Port: 50051, Endpoints: eps}}}
}

func TestPushes(t *testing.T) {
	v4 := discovery.Endpoint{Address: netip.MustParseAddrPort("10.1.0.7:8080"), Ready: true, Serving: true, Zone: "zone-a", Pod: "greeter-a"}
	v6 := discovery.Endpoint{Address: netip.MustParseAddrPort("[fd00::7]:8080"), Ready: true, Serving: true, Zone: "zone-b", Pod: "greeter-b"}
	off := discovery.Endpoint{Address: netip.MustParseAddrPort("10.1.0.9:8080")}

	reg := discovery.NewRegistry()
	reg.Set(svc(v4, v6, off))
	cc := newFakeCC()
	r, err := NewBuilder(reg).Build(parse(t, "kubernetes:///greeter.shop"), cc, resolver.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}

	s := cc.nextState(t)
	if got := addrsOf(s); !slices.Equal(got, []string{"10.1.0.7:8080", "[fd00::7]:8080"}) {
		t.Fatalf("first state %v; want the two ready endpoints, IPv6 bracketed", got)
	}
	if Zone(s.Endpoints[1]) != "zone-b" || Pod(s.Endpoints[1]) != "greeter-b" {
		t.Fatalf("endpoint attributes zone=%q pod=%q; want zone-b greeter-b", Zone(s.Endpoints[1]), Pod(s.Endpoints[1]))
	}

	// A change that leaves the ready set as it was sends nothing; the next
	// real change shows it.
	off.Zone = "zone-c"
	reg.Set(svc(v4, v6, off))
	reg.Set(&discovery.Service{Key: discovery.Key{Namespace: "shop", Name: "other"}})
	v6.Ready = false
	reg.Set(svc(v4, v6, off))
	if got := addrsOf(cc.nextState(t)); !slices.Equal(got, []string{"10.1.0.7:8080"}) {
		t.Fatalf("state after v6 left: %v", got)
	}
	cc.quiet(t)

	r.Close()
	reg.Set(svc(v4))
	cc.quiet(t) // Close waited for the goroutine: nothing more can come
}

func TestBuildRejectsBadTarget(t *testing.T) {
	_, err := NewBuilder(discovery.NewRegistry()).Build(parse(t, "kubernetes:///a.b.c.d:1"), newFakeCC(), resolver.BuildOptions{})
	if err == nil {
		t.Fatal("Build accepted kubernetes:///a.b.c.d:1")
	}
}

// The Service's lb-policy annotation reaches the client as a service
// config with the control plane's fallback order; without it none is sent
// (the client's default applies), and a bad value keeps the last good one.
func TestPolicyFromAnnotation(t *testing.T) {
	ep := discovery.Endpoint{Address: netip.MustParseAddrPort("10.1.0.7:8080"), Ready: true, Serving: true}
	annotated := func(lb string) *discovery.Service {
		s := svc(ep)
		s.Annotations = map[string]string{policy.LBAnnotation: lb}
		return s
	}
	const (
		peakEWMA     = `{"loadBalancingConfig":[{"ballast_peak_ewma":{}},{"ballast_p2c":{}},{"least_request_experimental":{"choiceCount":2}},{"round_robin":{}}]}`
		leastRequest = `{"loadBalancingConfig":[{"ballast_p2c":{}},{"least_request_experimental":{"choiceCount":2}},{"round_robin":{}}]}`
		roundRobin   = `{"loadBalancingConfig":[{"round_robin":{}}]}`
	)
	steps := []struct {
		name    string
		service *discovery.Service
		want    string // "" for no service config
	}{
		{"no annotation", svc(ep), ""},
		{"peak_ewma", annotated("peak_ewma"), peakEWMA},
		{"least_request", annotated("least_request"), leastRequest},
		{"a typo keeps the last good policy", annotated("least-request"), leastRequest},
		{"round_robin", annotated("round_robin"), roundRobin},
		{"annotation removed", svc(ep), ""},
	}
	reg := discovery.NewRegistry()
	cc := newFakeCC()
	var r resolver.Resolver
	for i, step := range steps {
		reg.Set(step.service)
		if i == 0 {
			var err error
			if r, err = NewBuilder(reg).Build(parse(t, "kubernetes:///greeter.shop"), cc, resolver.BuildOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		if step.name == "a typo keeps the last good policy" {
			continue // nothing changed for the client: the next step's state shows nothing was sent
		}
		s := cc.nextState(t)
		var got string
		if s.ServiceConfig != nil {
			got = <-cc.configs
		}
		if got != step.want {
			t.Errorf("%s: service config %q, want %q", step.name, got, step.want)
		}
	}
	cc.quiet(t)
	r.Close()

	// Each is a service config gRPC takes.
	for _, js := range []string{peakEWMA, leastRequest, roundRobin} {
		conn, err := grpc.NewClient("passthrough:///127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultServiceConfig(js))
		if err != nil {
			t.Errorf("gRPC refuses %s: %v", js, err)
			continue
		}
		conn.Close()
	}
}
