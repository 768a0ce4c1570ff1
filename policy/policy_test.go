package policy_test

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/policy"
)

// Each policy renders as a service config that reads back as itself, and
// lists Ballast's balancer first, then the standard ones, ending with
// round_robin.
func TestServiceConfigRoundTrip(t *testing.T) {
	tests := []struct {
		lb   policy.LB
		want string
	}{
		{policy.RoundRobin, `{"loadBalancingConfig":[{"round_robin":{}}]}`},
		{policy.LeastRequest, `{"loadBalancingConfig":[{"ballast_p2c":{}},{"least_request_experimental":{"choiceCount":2}},{"round_robin":{}}]}`},
		{policy.PeakEWMA, `{"loadBalancingConfig":[{"ballast_peak_ewma":{}},{"ballast_p2c":{}},{"least_request_experimental":{"choiceCount":2}},{"round_robin":{}}]}`},
	}
	for _, tt := range tests {
		t.Run(string(tt.lb), func(t *testing.T) {
			got := tt.lb.ServiceConfig()
			if got != tt.want {
				t.Fatalf("ServiceConfig = %s, want %s", got, tt.want)
			}
			back, err := policy.ParseServiceConfig(got)
			if err != nil || back != tt.lb {
				t.Fatalf("ParseServiceConfig = %q, %v; want %q", back, err, tt.lb)
			}
		})
	}
}

func TestParseServiceConfig(t *testing.T) {
	tests := []struct {
		name, js string
		want     policy.LB
		wantErr  string
	}{
		{"none", `{}`, policy.RoundRobin, ""},
		{"grpc's least_request alone", `{"loadBalancingConfig":[{"least_request_experimental":{}}]}`, policy.LeastRequest, ""},
		{"unknown entries are skipped", `{"loadBalancingConfig":[{"weighted_target":{}},{"ballast_peak_ewma":{}}]}`, policy.PeakEWMA, ""},
		{"nothing known", `{"loadBalancingConfig":[{"weighted_target":{}}]}`, "", "names no known policy (weighted_target)"},
		{"not json", `{`, "", "service config:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := policy.ParseServiceConfig(tt.js)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// The annotation wins over the default; a bad value (or a bad default)
// is an error naming the Service, the annotation and the value.
func TestServiceLB(t *testing.T) {
	svc := func(annotation string) *discovery.Service {
		s := &discovery.Service{Key: discovery.Key{Namespace: "shop", Name: "cart"}}
		if annotation != "" {
			s.Annotations = map[string]string{policy.LBAnnotation: annotation}
		}
		return s
	}
	tests := []struct {
		name       string
		annotation string
		defaults   policy.Defaults
		want       policy.LB
		wantOK     bool
		wantErr    string
	}{
		{"nothing", "", policy.Defaults{}, policy.RoundRobin, false, ""},
		{"default", "", policy.Defaults{LB: policy.PeakEWMA}, policy.PeakEWMA, false, ""},
		{"annotation wins", "least_request", policy.Defaults{LB: policy.PeakEWMA}, policy.LeastRequest, true, ""},
		{"bad annotation", "fastest", policy.Defaults{}, "", true, `service shop/cart: annotation ballast.dev/lb-policy: unknown lb policy "fastest"`},
		{"bad default", "", policy.Defaults{LB: "random"}, "", false, `service shop/cart: unknown lb policy "random"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, err := policy.ServiceLB(svc(tt.annotation), tt.defaults)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want || ok != tt.wantOK {
				t.Fatalf("got %q, %v, %v; want %q, %v", got, ok, err, tt.want, tt.wantOK)
			}
		})
	}
}

// Endpoints as clients get them: ready ones healthy, terminating ones that
// still serve draining, the rest left out, grouped by zone; Usable keeps
// the healthy ones.
func TestEndpointsOf(t *testing.T) {
	ep := func(addr string, ready, serving, terminating bool, zone string) discovery.Endpoint {
		return discovery.Endpoint{Address: netip.MustParseAddrPort(addr), Ready: ready, Serving: serving, Terminating: terminating, Zone: zone, Pod: addr}
	}
	got := policy.EndpointsOf("c", []discovery.Endpoint{
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

func TestParseLB(t *testing.T) {
	for _, s := range []string{"round_robin", "least_request", "peak_ewma"} {
		if p, err := policy.ParseLB(s); err != nil || string(p) != s {
			t.Errorf("ParseLB(%q) = %q, %v", s, p, err)
		}
	}
	for _, s := range []string{"", "ballast_p2c", "p2c", "ROUND_ROBIN"} {
		if _, err := policy.ParseLB(s); err == nil || !strings.Contains(err.Error(), "round_robin, least_request or peak_ewma") {
			t.Errorf("ParseLB(%q): error %v, want one listing the policies", s, err)
		}
	}
}
