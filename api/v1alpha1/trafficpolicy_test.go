package v1alpha1

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

const sample = `
apiVersion: ballast.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: greeter, namespace: demo, labels: {a: b}}
spec:
  targetRefs:
  - {group: "", kind: Service, name: greeter}
  - {group: gateway.networking.k8s.io, kind: GRPCRoute, name: greeter, sectionName: slow}
  timeouts: {request: 200ms, backendRequest: 100ms}
  retry: {codes: [Unavailable, ResourceExhausted], attempts: 2, backoff: 25ms, budget: {percent: 20, interval: 10s, minRetryRate: {count: 3, interval: 1s}}}
  circuitBreaker: {maxRequests: 100, maxPendingRequests: 10, maxConnections: 4}
  outlierDetection: {interval: 1s, baseEjectionTime: 30s, maxEjectionTime: 300s, maxEjectionPercent: 50, consecutiveErrors: 5,
    successRateEjection: {stdevFactor: 1900, enforcementPercentage: 100, minimumHosts: 5, requestVolume: 100},
    failurePercentageEjection: {threshold: 85, enforcementPercentage: 100, minimumHosts: 5, requestVolume: 50}}
  rateLimit: {requestsPerSecond: 100, burst: 10}
  fault: {delay: {fixed: 10ms, percent: 5}, abort: {code: Unavailable, percent: 10}}
`

func decode(t *testing.T, s string) *TrafficPolicy {
	t.Helper()
	var p TrafficPolicy
	if err := yaml.UnmarshalStrict([]byte(s), &p); err != nil {
		t.Fatal(err)
	}
	return &p
}

func TestDeepCopy(t *testing.T) {
	p := decode(t, sample)
	c := p.DeepCopy()
	if !reflect.DeepEqual(p, c) {
		t.Fatalf("copy differs:\n%+v\n%+v", p, c)
	}
	// Change every pointer, slice and map in the copy: the original must not see it.
	c.Labels["a"] = "changed"
	c.Spec.TargetRefs[1].Name = "other"
	*c.Spec.TargetRefs[1].SectionName = "other"
	*c.Spec.Timeouts.Request = "1s"
	*c.Spec.Timeouts.BackendRequest = "1s"
	c.Spec.Retry.Codes[0] = "Internal"
	*c.Spec.Retry.Attempts = 5
	*c.Spec.Retry.Backoff = "1s"
	*c.Spec.Retry.Budget.Percent = 50
	*c.Spec.Retry.Budget.Interval = "1s"
	*c.Spec.Retry.Budget.MinRetryRate.Count = 9
	*c.Spec.Retry.Budget.MinRetryRate.Interval = "9s"
	*c.Spec.CircuitBreaker.MaxRequests = 1
	*c.Spec.CircuitBreaker.MaxPendingRequests = 1
	*c.Spec.CircuitBreaker.MaxConnections = 1
	o := c.Spec.OutlierDetection
	*o.Interval, *o.BaseEjectionTime, *o.MaxEjectionTime = "9s", "9s", "9s"
	*o.MaxEjectionPercent, *o.ConsecutiveErrors = 9, 9
	*o.SuccessRateEjection.StdevFactor, *o.SuccessRateEjection.EnforcementPercentage = 9, 9
	*o.SuccessRateEjection.MinimumHosts, *o.SuccessRateEjection.RequestVolume = 9, 9
	*o.FailurePercentageEjection.Threshold, *o.FailurePercentageEjection.EnforcementPercentage = 9, 9
	*o.FailurePercentageEjection.MinimumHosts, *o.FailurePercentageEjection.RequestVolume = 9, 9
	*c.Spec.RateLimit.Burst = 1
	c.Spec.Fault.Delay.Percent = 50
	c.Spec.Fault.Abort.Code = "Internal"
	if want := decode(t, sample); !reflect.DeepEqual(p, want) {
		t.Fatalf("original changed through its copy:\n%+v", p)
	}
	l := &TrafficPolicyList{Items: []TrafficPolicy{*decode(t, sample)}}
	lc := l.DeepCopyObject().(*TrafficPolicyList)
	*lc.Items[0].Spec.Retry.Attempts = 9
	if *l.Items[0].Spec.Retry.Attempts != 2 {
		t.Fatal("list copy shares its items' pointers")
	}
	if (*TrafficPolicy)(nil).DeepCopy() != nil {
		t.Fatal("nil copy is not nil")
	}
}

func TestScheme(t *testing.T) {
	s := runtime.NewScheme()
	if err := AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	gvks, _, err := s.ObjectKinds(&TrafficPolicy{})
	if err != nil || len(gvks) != 1 || gvks[0] != GroupVersion.WithKind("TrafficPolicy") {
		t.Fatalf("ObjectKinds = %v, %v", gvks, err)
	}
	if _, err := s.New(GroupVersion.WithKind("TrafficPolicyList")); err != nil {
		t.Fatal(err)
	}
}

func TestParseDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{in: "200ms", want: 200 * time.Millisecond},
		{in: "1h2m3s4ms", want: time.Hour + 2*time.Minute + 3*time.Second + 4*time.Millisecond},
		{in: "99999s", want: 99999 * time.Second},
		{in: "0s", want: 0},
		{in: "", err: true},
		{in: "1.5s", err: true},
		{in: "100us", err: true},
		{in: "100000s", err: true},
		{in: "1s1s1s1s1s", err: true},
		{in: "s", err: true},
		{in: "10", err: true},
		{in: "-1s", err: true},
	} {
		got, err := ParseDuration(gatewayv1.Duration(tc.in))
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestValidate(t *testing.T) {
	const svcTarget = "targetRefs: [{group: '', kind: Service, name: greeter}]\n"
	for _, tc := range []struct {
		name, edit, err string
	}{
		{name: "good"},
		{name: "no targets", edit: "targetRefs: []", err: "spec.targetRefs: at least one"},
		{name: "bad kind", edit: "targetRefs: [{group: apps, kind: Deployment, name: x}]", err: "spec.targetRefs[0]: group \"apps\""},
		{name: "service section", edit: "targetRefs: [{group: '', kind: Service, name: x, sectionName: grpc}]", err: "spec.targetRefs[0].sectionName"},
		{name: "bad request", edit: "timeouts: {request: 1.5s}", err: "spec.timeouts.request: duration \"1.5s\""},
		{name: "try over request", edit: "timeouts: {request: 100ms, backendRequest: 1s}", err: "spec.timeouts.backendRequest 1s exceeds"},
		{name: "bad code", edit: "retry: {codes: [UNAVAILABLE]}", err: "spec.retry.codes[0]: \"UNAVAILABLE\""},
		{name: "attempts", edit: "retry: {attempts: 11}", err: "spec.retry.attempts: 11"},
		{name: "backoff", edit: "retry: {backoff: 1us}", err: "spec.retry.backoff"},
		{name: "budget percent", edit: "retry: {budget: {percent: 101}}", err: "spec.retry.budget.percent: 101"},
		{name: "budget interval", edit: "retry: {budget: {interval: 10ms}}", err: "spec.retry.budget.interval: 10ms is under 1s"},
		{name: "min retry count", edit: "retry: {budget: {minRetryRate: {count: -1}}}", err: "spec.retry.budget.minRetryRate.count"},
		{name: "min retry interval", edit: "retry: {budget: {minRetryRate: {interval: 0s}}}", err: "spec.retry.budget.minRetryRate.interval"},
		{name: "max requests 0", edit: "circuitBreaker: {maxRequests: 0}", err: "spec.circuitBreaker.maxRequests: 0 is under 1"},
		{name: "max pending negative", edit: "circuitBreaker: {maxPendingRequests: -1}", err: "spec.circuitBreaker.maxPendingRequests: -1"},
		{name: "max connections 0", edit: "circuitBreaker: {maxConnections: 0}", err: "spec.circuitBreaker.maxConnections: 0"},
		{name: "interval 0", edit: "outlierDetection: {interval: 0s}", err: "spec.outlierDetection.interval: must be above 0"},
		{name: "interval fraction", edit: "outlierDetection: {interval: 0.5s}", err: "spec.outlierDetection.interval: duration"},
		{name: "base ejection 0", edit: "outlierDetection: {baseEjectionTime: 0s}", err: "spec.outlierDetection.baseEjectionTime"},
		{name: "max under base", edit: "outlierDetection: {baseEjectionTime: 30s, maxEjectionTime: 10s}", err: "spec.outlierDetection.maxEjectionTime 10s is under baseEjectionTime 30s"},
		{name: "ejection percent", edit: "outlierDetection: {maxEjectionPercent: 101}", err: "spec.outlierDetection.maxEjectionPercent: 101"},
		{name: "consecutive errors 0", edit: "outlierDetection: {consecutiveErrors: 0}", err: "spec.outlierDetection.consecutiveErrors: 0 is under 1"},
		{name: "stdev factor", edit: "outlierDetection: {successRateEjection: {stdevFactor: -1}}", err: "spec.outlierDetection.successRateEjection.stdevFactor"},
		{name: "success enforcement", edit: "outlierDetection: {successRateEjection: {enforcementPercentage: 101}}", err: "spec.outlierDetection.successRateEjection.enforcementPercentage"},
		{name: "success hosts", edit: "outlierDetection: {successRateEjection: {minimumHosts: -1}}", err: "spec.outlierDetection.successRateEjection.minimumHosts"},
		{name: "success volume", edit: "outlierDetection: {successRateEjection: {requestVolume: -1}}", err: "spec.outlierDetection.successRateEjection.requestVolume"},
		{name: "failure threshold", edit: "outlierDetection: {failurePercentageEjection: {threshold: 101}}", err: "spec.outlierDetection.failurePercentageEjection.threshold"},
		{name: "failure enforcement", edit: "outlierDetection: {failurePercentageEjection: {enforcementPercentage: -1}}", err: "spec.outlierDetection.failurePercentageEjection.enforcementPercentage"},
		{name: "failure hosts", edit: "outlierDetection: {failurePercentageEjection: {minimumHosts: -1}}", err: "spec.outlierDetection.failurePercentageEjection.minimumHosts"},
		{name: "failure volume", edit: "outlierDetection: {failurePercentageEjection: {requestVolume: -1}}", err: "spec.outlierDetection.failurePercentageEjection.requestVolume"},
		{name: "ring hash", edit: svcTarget + "loadBalancer: {policy: ring_hash, hashHeader: x-user}"},
		{name: "lb policy", edit: svcTarget + "loadBalancer: {policy: random}", err: "spec.loadBalancer.policy: \"random\""},
		{name: "hash without ring", edit: svcTarget + "loadBalancer: {policy: round_robin, hashHeader: x-user}", err: "spec.loadBalancer.hashHeader: only"},
		{name: "hash header", edit: svcTarget + "loadBalancer: {policy: ring_hash, hashHeader: X-User}", err: "spec.loadBalancer.hashHeader: \"X-User\""},
		{name: "lb on a route", edit: "loadBalancer: {policy: ring_hash}", err: "spec.loadBalancer: applies to Service targets only, and spec.targetRefs[1]"},
		{name: "rate 0", edit: "rateLimit: {requestsPerSecond: 0}", err: "spec.rateLimit.requestsPerSecond: 0"},
		{name: "burst 0", edit: "rateLimit: {requestsPerSecond: 1, burst: 0}", err: "spec.rateLimit.burst: 0"},
		{name: "empty fault", edit: "fault: {}", err: "spec.fault: give delay"},
		{name: "delay duration", edit: "fault: {delay: {fixed: 1.5s, percent: 1}}", err: "spec.fault.delay.fixed"},
		{name: "delay percent", edit: "fault: {delay: {fixed: 1s, percent: 101}}", err: "spec.fault.delay.percent: 101"},
		{name: "abort code", edit: "fault: {abort: {code: OK, percent: 1}}", err: "spec.fault.abort.code: \"OK\""},
		{name: "abort percent", edit: "fault: {abort: {code: Internal, percent: -1}}", err: "spec.fault.abort.percent: -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := decode(t, sample)
			if tc.edit != "" {
				var patch TrafficPolicySpec
				if err := yaml.UnmarshalStrict([]byte(tc.edit), &patch); err != nil {
					t.Fatal(err)
				}
				switch {
				case strings.HasPrefix(tc.edit, "targetRefs"):
					p.Spec.TargetRefs = patch.TargetRefs
				case strings.HasPrefix(tc.edit, "timeouts"):
					p.Spec.Timeouts = patch.Timeouts
				case strings.HasPrefix(tc.edit, "retry"):
					p.Spec.Retry = patch.Retry
				case strings.HasPrefix(tc.edit, "circuitBreaker"):
					p.Spec.CircuitBreaker = patch.CircuitBreaker
				case strings.HasPrefix(tc.edit, "outlierDetection"):
					p.Spec.OutlierDetection = patch.OutlierDetection
				}
				if patch.TargetRefs != nil {
					p.Spec.TargetRefs = patch.TargetRefs
				}
				if strings.Contains(tc.edit, "loadBalancer:") {
					p.Spec.LoadBalancer = patch.LoadBalancer
				}
				if strings.Contains(tc.edit, "rateLimit:") {
					p.Spec.RateLimit = patch.RateLimit
				}
				if strings.Contains(tc.edit, "fault:") {
					p.Spec.Fault = patch.Fault
				}
			}
			err := p.Spec.Validate()
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tc.err)
			}
		})
	}
}
