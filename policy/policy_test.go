package policy_test

import (
	"strings"
	"testing"

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
	annotations := func(annotation string) map[string]string {
		if annotation == "" {
			return nil
		}
		return map[string]string{policy.LBAnnotation: annotation}
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
			got, ok, err := policy.ServiceLB("shop/cart", annotations(tt.annotation), tt.defaults)
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

func TestParseLB(t *testing.T) {
	for _, s := range []string{"round_robin", "least_request", "peak_ewma", "ring_hash"} {
		if p, err := policy.ParseLB(s); err != nil || string(p) != s {
			t.Errorf("ParseLB(%q) = %q, %v", s, p, err)
		}
	}
	for _, s := range []string{"", "ballast_p2c", "p2c", "ROUND_ROBIN"} {
		if _, err := policy.ParseLB(s); err == nil || !strings.Contains(err.Error(), "round_robin, least_request, peak_ewma or ring_hash") {
			t.Errorf("ParseLB(%q): error %v, want one listing the policies", s, err)
		}
	}
}
