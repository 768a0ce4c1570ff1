package callpolicy

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/ballast-dev/ballast/policy"
)

func rules(cps ...policy.CallPolicy) []policy.Rule {
	out := make([]policy.Rule, len(cps))
	for i, cp := range cps {
		out[i].Call = cp
	}
	return out
}

// A route without call policies compiles to nothing; each rule that asks
// for something gets a Rule, the others none.
func TestCompile(t *testing.T) {
	if got := Compile(rules(policy.CallPolicy{}, policy.CallPolicy{}), nil); got != nil {
		t.Fatalf("Compile of rules without policies = %v, want nil", got)
	}
	for _, tc := range []struct {
		name   string
		cp     policy.CallPolicy
		admits bool
	}{
		{"timeout", policy.CallPolicy{Timeout: time.Second}, false},
		{"retry", policy.CallPolicy{Retry: &policy.Retry{Codes: []codes.Code{codes.Unavailable}, Attempts: 1}}, false},
		{"rate limit", policy.CallPolicy{RateLimit: &policy.RateLimit{RequestsPerSecond: 1, Burst: 1}}, true},
		{"abort", policy.CallPolicy{Fault: &policy.Fault{AbortCode: codes.Internal, AbortPercent: 1}}, true},
		{"delay", policy.CallPolicy{Fault: &policy.Fault{Delay: time.Second, DelayPercent: 1}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Compile(rules(policy.CallPolicy{}, tc.cp), nil)
			if len(got) != 2 || got[0] != nil || got[1] == nil {
				t.Fatalf("Compile = %v, want a Rule for the second rule only", got)
			}
			if got[1].Admits() != tc.admits {
				t.Errorf("Admits() = %v, want %v", got[1].Admits(), tc.admits)
			}
		})
	}
	// A fault of 0% or of nothing asks for nothing.
	if got := Compile(rules(policy.CallPolicy{Fault: &policy.Fault{AbortCode: codes.Internal}}), nil); got != nil {
		t.Errorf("Compile of a 0%% abort = %v, want nil", got)
	}
}

// Rules with the same bucket share it, across routes compiled again: a
// burst of 3 lets 3 calls through in all, whichever rule makes them;
// those over it fail RESOURCE_EXHAUSTED naming the bucket and the limit.
// Another bucket counts on its own.
func TestRateLimitBuckets(t *testing.T) {
	var b Buckets
	shared := policy.CallPolicy{RateLimit: &policy.RateLimit{RequestsPerSecond: 1, Burst: 3, Bucket: "Service default/greeter"}}
	other := policy.CallPolicy{RateLimit: &policy.RateLimit{RequestsPerSecond: 1, Burst: 1, Bucket: "GRPCRoute default/r rule slow"}}
	first := Compile(rules(shared, shared, other), &b)
	again := Compile(rules(shared, shared, other), &b) // the route compiled again
	allowed := 0
	for _, r := range []*Rule{first[0], first[1], again[0], again[1], first[0], again[1]} {
		_, fail := r.Admit()
		if fail == nil {
			allowed++
			continue
		}
		if fail.Code() != codes.ResourceExhausted || !strings.Contains(fail.Message(), "Service default/greeter") || !strings.Contains(fail.Message(), "1 requests per second, burst 3") {
			t.Errorf("over the limit: %v, want RESOURCE_EXHAUSTED naming the bucket and its limit", fail)
		}
	}
	if allowed != 3 {
		t.Errorf("%d of 6 calls allowed through a shared burst of 3, want 3", allowed)
	}
	if _, fail := again[2].Admit(); fail != nil {
		t.Errorf("the other bucket's first call: %v, want allowed", fail)
	}
}

// Aborts and delays land on their share of calls (100,000 decisions,
// ±1%); a call over the rate limit is neither.
func TestFaultShare(t *testing.T) {
	r := Compile(rules(policy.CallPolicy{Fault: &policy.Fault{
		Delay: time.Second, DelayPercent: 20, AbortCode: codes.Unavailable, AbortPercent: 10,
	}}), nil)[0]
	const n = 100000
	delayed, aborted := 0, 0
	for range n {
		d, fail := r.Admit()
		if d == time.Second {
			delayed++
		}
		if fail != nil {
			if fail.Code() != codes.Unavailable || !strings.Contains(fail.Message(), "fault injected") {
				t.Fatalf("abort %v, want UNAVAILABLE saying it is a fault", fail)
			}
			aborted++
		}
	}
	if d := float64(delayed) / n; d < 0.19 || d > 0.21 {
		t.Errorf("%.2f%% delayed, want 20%% ± 1%%", 100*d)
	}
	if a := float64(aborted) / n; a < 0.09 || a > 0.11 {
		t.Errorf("%.2f%% aborted, want 10%% ± 1%%", 100*a)
	}
	limited := Compile(rules(policy.CallPolicy{
		RateLimit: &policy.RateLimit{RequestsPerSecond: 1, Burst: 1},
		Fault:     &policy.Fault{Delay: time.Second, DelayPercent: 100},
	}), nil)[0]
	limited.Admit()
	if d, fail := limited.Admit(); d != 0 || fail == nil || fail.Code() != codes.ResourceExhausted {
		t.Errorf("over the limit: delay %v, %v; want no delay, RESOURCE_EXHAUSTED", d, fail)
	}
}
