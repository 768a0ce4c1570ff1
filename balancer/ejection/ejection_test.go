package ejection

import (
	"strings"
	"testing"
	"time"

	"github.com/ballast-dev/ballast/policy"
)

// The chain a Cluster runs: consecutive errors between grpc-go's outlier
// detection and the Cluster's balancer only when the policy asks for
// them; a bad config names what is wrong.
func TestBalancerAndConfig(t *testing.T) {
	od := policy.DefaultOutlierDetection
	if name, _, err := Balancer(policy.Cluster{LB: policy.RoundRobin}, nil); err != nil || name != "round_robin" {
		t.Errorf("no outlier detection: %s, %v; want round_robin", name, err)
	}
	if name, _, err := Balancer(policy.Cluster{LB: policy.RoundRobin}, &od); err != nil || name != policy.OutlierDetectionBalancer {
		t.Errorf("outlier detection: %s, %v; want %s", name, err, policy.OutlierDetectionBalancer)
	}
	consecutive := od
	consecutive.ConsecutiveErrors = 3
	cfg, err := builder{}.ParseConfig(consecutiveConfig(&consecutive, policy.Balancer{Name: "round_robin", Config: []byte("{}")}))
	if err != nil {
		t.Fatal(err)
	}
	if c := cfg.(*config); c.consecutive != 3 || c.base != 30*time.Second || c.max != 300*time.Second || c.maxPercent != 10 || c.child != "round_robin" {
		t.Errorf("parsed %+v", c)
	}
	for _, tc := range []struct{ js, want string }{
		{`{"consecutiveErrors":0,"baseEjectionTime":"1s","maxEjectionTime":"1s","childPolicy":[{"round_robin":{}}]}`, "consecutiveErrors 0"},
		{`{"consecutiveErrors":1,"baseEjectionTime":"x","maxEjectionTime":"1s","childPolicy":[{"round_robin":{}}]}`, `baseEjectionTime "x"`},
		{`{"consecutiveErrors":1,"baseEjectionTime":"1s","maxEjectionTime":"1s","childPolicy":[{"nope":{}}]}`, "no registered balancer"},
		{`{"consecutive":1}`, "unknown field"},
	} {
		if _, err := (builder{}).ParseConfig([]byte(tc.js)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.js, err, tc.want)
		}
	}
}
