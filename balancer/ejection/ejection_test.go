package ejection

import (
	"slices"
	"strings"
	"testing"
	"time"

	_ "google.golang.org/grpc/balancer/roundrobin"

	"github.com/ballast-dev/ballast/policy"
)

// The chain a Cluster runs: this package's balancer over the Cluster's
// only when the policy asks for some ejection; a bad outlier detection
// is an error that names the field.
func TestBalancer(t *testing.T) {
	sr, fp := policy.DefaultSuccessRate, policy.DefaultFailurePercentage
	with := func(f func(o *policy.OutlierDetection)) *policy.OutlierDetection {
		o := policy.DefaultOutlierDetection
		f(&o)
		return &o
	}
	for _, tc := range []struct {
		name    string
		od      *policy.OutlierDetection
		want    string
		wantErr string
	}{
		{name: "none", od: nil, want: "round_robin"},
		{name: "no algorithm", od: &policy.DefaultOutlierDetection, want: "round_robin"},
		{name: "success rate", od: with(func(o *policy.OutlierDetection) { o.SuccessRate = &sr }), want: Name},
		{name: "failure percentage", od: with(func(o *policy.OutlierDetection) { o.FailurePercentage = &fp }), want: Name},
		{name: "consecutive errors", od: with(func(o *policy.OutlierDetection) { o.ConsecutiveErrors = 3 }), want: Name},
		{name: "no base time", od: with(func(o *policy.OutlierDetection) { o.ConsecutiveErrors, o.BaseEjectionTime = 3, 0 }), wantErr: "baseEjectionTime 0s"},
		{name: "max percent", od: with(func(o *policy.OutlierDetection) { o.ConsecutiveErrors, o.MaxEjectionPercent = 3, 101 }), wantErr: "maxEjectionPercent 101"},
		{name: "no interval", od: with(func(o *policy.OutlierDetection) { o.FailurePercentage, o.Interval = &fp, 0 }), wantErr: "interval 0s"},
		{name: "threshold", od: with(func(o *policy.OutlierDetection) {
			o.FailurePercentage = &policy.FailurePercentageEjection{Threshold: 200, EnforcementPercentage: 100}
		}), wantErr: "threshold 200"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name, cfg, err := Balancer(policy.Cluster{LB: policy.RoundRobin}, tc.od)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("%s, %v; want an error containing %q", name, err, tc.wantErr)
				}
				return
			}
			if err != nil || name != tc.want {
				t.Fatalf("%s, %v; want %s", name, err, tc.want)
			}
			if c, ok := cfg.(*config); name == Name && (!ok || c.child != "round_robin" || c.od.BaseEjectionTime != 30*time.Second) {
				t.Errorf("config %+v, want round_robin under the outlier detection", cfg)
			}
		})
	}
}

// gRFC A50's two algorithms over one interval's calls.
func TestOutliers(t *testing.T) {
	ok := func(n uint32) tally { return tally{succeeded: n} }
	mixed := func(succeeded, failed uint32) tally { return tally{succeeded: succeeded, failed: failed} }
	sr := policy.SuccessRateEjection{StdevFactor: 1000, EnforcementPercentage: 100, MinimumHosts: 3, RequestVolume: 10}
	fp := policy.FailurePercentageEjection{Threshold: 50, EnforcementPercentage: 100, MinimumHosts: 3, RequestVolume: 10}
	for _, tc := range []struct {
		name           string
		tallies        []tally
		wantSR, wantFP []int
	}{
		{name: "all fine", tallies: []tally{ok(20), ok(20), ok(20)}},
		{name: "one failing", tallies: []tally{ok(20), mixed(0, 20), ok(20)}, wantSR: []int{1}, wantFP: []int{1}},
		// Below the mean, within a standard deviation: the spread is wide.
		{name: "wide spread", tallies: []tally{mixed(10, 10), mixed(20, 0), mixed(15, 5)}, wantSR: []int{0}},
		{name: "half failed, not above the threshold", tallies: []tally{mixed(10, 10), ok(20), ok(20)}, wantSR: []int{0}},
		{name: "too few hosts with volume", tallies: []tally{ok(20), mixed(0, 20), ok(9)}},
		{name: "the failing one lacks volume", tallies: []tally{ok(20), mixed(0, 9), ok(20), ok(20)}},
		{name: "no calls", tallies: []tally{{}, {}, {}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := successRateOutliers(sr, tc.tallies); !slices.Equal(got, tc.wantSR) {
				t.Errorf("success rate: %v, want %v", got, tc.wantSR)
			}
			if got := failurePercentageOutliers(fp, tc.tallies); !slices.Equal(got, tc.wantFP) {
				t.Errorf("failure percentage: %v, want %v", got, tc.wantFP)
			}
		})
	}
}
