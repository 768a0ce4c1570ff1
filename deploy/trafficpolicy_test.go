package deploy_test

import (
	"context"
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
			u.SetName("p" + strings.Repeat("x", i%2) + string(rune('a'+i)))
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
