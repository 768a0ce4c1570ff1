package deploy_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/ballast-dev/ballast/api/v1alpha1"
)

// The TrafficPolicy CRD deploy/ installs admits and rejects what
// api/v1alpha1's Validate (which --files applies) does, field by field, so
// a policy means the same from a cluster and from a folder.
func TestTrafficPolicyCRDAgreesWithValidate(t *testing.T) {
	if _, err := envtest.InstallCRDs(api.Config, envtest.CRDInstallOptions{Paths: []string{"control/crd"}}); err != nil {
		t.Fatalf("install the TrafficPolicy CRD: %v", err)
	}
	c, err := client.New(api.Config, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const service = "targetRefs: [{group: '', kind: Service, name: greeter}]\n"
	const targets = "targetRefs: [{group: '', kind: Service, name: greeter}, {group: gateway.networking.k8s.io, kind: GRPCRoute, name: r, sectionName: slow}]\n"
	for i, tc := range []struct {
		name, spec string
		reject     bool
	}{
		{name: "everything", spec: targets + "timeouts: {request: 200ms, backendRequest: 100ms}\nretry: {codes: [Unavailable, Internal], attempts: 2, backoff: 25ms, budget: {percent: 20, interval: 10s, minRetryRate: {count: 3, interval: 1s}}}"},
		{name: "request 0s is unbounded", spec: targets + "timeouts: {request: 0s, backendRequest: 1s}"},
		{name: "no targets", spec: "targetRefs: []", reject: true},
		{name: "a Deployment", spec: "targetRefs: [{group: apps, kind: Deployment, name: x}]", reject: true},
		{name: "a Service's section", spec: "targetRefs: [{group: '', kind: Service, name: x, sectionName: grpc}]", reject: true},
		{name: "a fraction", spec: targets + "timeouts: {request: 1.5s}", reject: true},
		{name: "microseconds", spec: targets + "retry: {backoff: 100us}", reject: true},
		{name: "five groups", spec: targets + "timeouts: {request: 1h1m1s1ms1s}", reject: true},
		{name: "try over request", spec: targets + "timeouts: {request: 100ms, backendRequest: 1s}", reject: true},
		{name: "a code in capitals", spec: targets + "retry: {codes: [UNAVAILABLE]}", reject: true},
		{name: "11 attempts", spec: targets + "retry: {attempts: 11}", reject: true},
		{name: "negative attempts", spec: targets + "retry: {attempts: -1}", reject: true},
		{name: "budget over 100%", spec: targets + "retry: {budget: {percent: 101}}", reject: true},
		{name: "budget interval under 1s", spec: targets + "retry: {budget: {interval: 500ms}}", reject: true},
		{name: "negative min retries", spec: targets + "retry: {budget: {minRetryRate: {count: -1}}}", reject: true},
		{name: "min retry interval 0", spec: targets + "retry: {budget: {minRetryRate: {interval: 0s}}}", reject: true},
		{name: "circuit breaker and outlier detection", spec: targets + "circuitBreaker: {maxRequests: 100, maxPendingRequests: 10, maxConnections: 4}\n" +
			"outlierDetection: {interval: 1s, baseEjectionTime: 30s, maxEjectionTime: 30s, maxEjectionPercent: 100, consecutiveErrors: 1, " +
			"successRateEjection: {stdevFactor: 0, enforcementPercentage: 100, minimumHosts: 0, requestVolume: 0}, " +
			"failurePercentageEjection: {threshold: 0, enforcementPercentage: 0, minimumHosts: 0, requestVolume: 0}}"},
		{name: "max requests 0", spec: targets + "circuitBreaker: {maxRequests: 0}", reject: true},
		{name: "max pending 0", spec: targets + "circuitBreaker: {maxPendingRequests: 0}", reject: true},
		{name: "max connections -1", spec: targets + "circuitBreaker: {maxConnections: -1}", reject: true},
		{name: "outlier interval 0", spec: targets + "outlierDetection: {interval: 0s}", reject: true},
		{name: "outlier interval fraction", spec: targets + "outlierDetection: {interval: 1.5s}", reject: true},
		{name: "base ejection 0", spec: targets + "outlierDetection: {baseEjectionTime: 0s}", reject: true},
		{name: "max ejection 0", spec: targets + "outlierDetection: {maxEjectionTime: 0s}", reject: true},
		{name: "max ejection under base", spec: targets + "outlierDetection: {baseEjectionTime: 30s, maxEjectionTime: 10s}", reject: true},
		{name: "ejection percent 101", spec: targets + "outlierDetection: {maxEjectionPercent: 101}", reject: true},
		{name: "consecutive errors 0", spec: targets + "outlierDetection: {consecutiveErrors: 0}", reject: true},
		{name: "stdev factor -1", spec: targets + "outlierDetection: {successRateEjection: {stdevFactor: -1}}", reject: true},
		{name: "success enforcement 101", spec: targets + "outlierDetection: {successRateEjection: {enforcementPercentage: 101}}", reject: true},
		{name: "success hosts -1", spec: targets + "outlierDetection: {successRateEjection: {minimumHosts: -1}}", reject: true},
		{name: "success volume -1", spec: targets + "outlierDetection: {successRateEjection: {requestVolume: -1}}", reject: true},
		{name: "failure threshold 101", spec: targets + "outlierDetection: {failurePercentageEjection: {threshold: 101}}", reject: true},
		{name: "failure enforcement -1", spec: targets + "outlierDetection: {failurePercentageEjection: {enforcementPercentage: -1}}", reject: true},
		{name: "failure hosts -1", spec: targets + "outlierDetection: {failurePercentageEjection: {minimumHosts: -1}}", reject: true},
		{name: "failure volume -1", spec: targets + "outlierDetection: {failurePercentageEjection: {requestVolume: -1}}", reject: true},
		{name: "rate limit and fault", spec: targets + "rateLimit: {requestsPerSecond: 100, burst: 10}\nfault: {delay: {fixed: 10ms, percent: 5}, abort: {code: Unavailable, percent: 10}}"},
		{name: "ring hash on a Service", spec: service + "loadBalancer: {policy: ring_hash, hashHeader: x-user}"},
		{name: "peak_ewma on a Service", spec: service + "loadBalancer: {policy: peak_ewma}"},
		{name: "loadBalancer on a route", spec: targets + "loadBalancer: {policy: round_robin}", reject: true},
		{name: "an unknown policy", spec: service + "loadBalancer: {policy: random}", reject: true},
		{name: "a hash header without ring_hash", spec: service + "loadBalancer: {policy: round_robin, hashHeader: x-user}", reject: true},
		{name: "a hash header in capitals", spec: service + "loadBalancer: {policy: ring_hash, hashHeader: X-User}", reject: true},
		{name: "a binary hash header", spec: service + "loadBalancer: {policy: ring_hash, hashHeader: x-user-bin}", reject: true},
		{name: "0 requests per second", spec: targets + "rateLimit: {requestsPerSecond: 0}", reject: true},
		{name: "burst 0", spec: targets + "rateLimit: {requestsPerSecond: 10, burst: 0}", reject: true},
		{name: "an empty fault", spec: targets + "fault: {}", reject: true},
		{name: "a delay in fractions", spec: targets + "fault: {delay: {fixed: 1.5s, percent: 1}}", reject: true},
		{name: "a delay over 100%", spec: targets + "fault: {delay: {fixed: 1s, percent: 101}}", reject: true},
		{name: "an abort with OK", spec: targets + "fault: {abort: {code: OK, percent: 1}}", reject: true},
		{name: "an abort under 0%", spec: targets + "fault: {abort: {code: Internal, percent: -1}}", reject: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p v1alpha1.TrafficPolicy
			if err := yaml.UnmarshalStrict([]byte(tc.spec), &p.Spec); err != nil {
				t.Fatal(err)
			}
			verr := p.Spec.Validate()
			if (verr != nil) != tc.reject {
				t.Errorf("Validate: %v, want rejected %v", verr, tc.reject)
			}
			u := &unstructured.Unstructured{}
			if err := yaml.Unmarshal([]byte("spec:\n  "+strings.ReplaceAll(tc.spec, "\n", "\n  ")), &u.Object); err != nil {
				t.Fatal(err)
			}
			u.SetAPIVersion(v1alpha1.GroupVersion.String())
			u.SetKind("TrafficPolicy")
			u.SetNamespace("default")
			u.SetName(fmt.Sprintf("p%d", i))
			var err error
			// The CRD was just created: until it is established the API
			// server does not serve the type.
			deadline := time.Now().Add(30 * time.Second)
			for err = c.Create(context.Background(), u); apierrors.IsNotFound(err) && time.Now().Before(deadline); err = c.Create(context.Background(), u) {
				time.Sleep(50 * time.Millisecond) // polling interval, not synchronisation
			}
			if tc.reject != apierrors.IsInvalid(err) || (!tc.reject && err != nil) {
				t.Errorf("API server: %v, want rejected %v (Validate said %v)", err, tc.reject, verr)
			}
		})
	}
}
