package policytest

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

// CanaryRules are the spec.rules of the GRPCRoute CheckRoute calls
// through, on Service greeter, whose backends (StartEcho) are named v1 and
// greeter-v2's v2: SayHello with x-canary: yes goes to greeter-v2 through
// a request and a response header filter; Split goes 90/10 to greeter and
// greeter-v2; Half goes half to greeter, half to Service missing, which
// does not exist; the rest to greeter.
const CanaryRules = `
- matches: [{method: {service: helloworld.Greeter, method: SayHello}, headers: [{name: x-canary, value: "yes"}]}]
  filters:
  - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-route, value: canary}], remove: [x-gone]}}
  - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-resp, value: r}]}}
  backendRefs: [{name: greeter-v2, port: 50051}]
- matches: [{method: {service: helloworld.Greeter, method: Split}}]
  backendRefs: [{name: greeter, port: 50051, weight: 90}, {name: greeter-v2, port: 50051, weight: 10}]
- matches: [{method: {service: helloworld.Greeter, method: Half}}]
  backendRefs: [{name: greeter, port: 50051}, {name: missing, port: 50051}]
- backendRefs: [{name: greeter, port: 50051}]
`

// GRPCRoute is GRPCRoute default/name at generation, attached to Service
// greeter, with the given spec.rules (YAML).
func GRPCRoute(t testing.TB, name string, generation int64, rules string) *gatewayv1.GRPCRoute {
	t.Helper()
	rt := &gatewayv1.GRPCRoute{}
	spec := "parentRefs: [{group: \"\", kind: Service, name: greeter}]\nrules:\n" + rules
	if err := yaml.UnmarshalStrict([]byte(spec), &rt.Spec); err != nil {
		t.Fatalf("route %s: %v", name, err)
	}
	rt.Name, rt.Namespace, rt.Generation = name, "default", generation
	rt.CreationTimestamp = metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	return rt
}

// CheckRoute checks that a client of Service greeter under CanaryRules
// routes as every mode must: the canary call with its headers filtered
// both ways, the same call without the header to v1, the 90/10 split
// within three standard deviations over 2,000 calls, and half of 400
// calls failing UNAVAILABLE naming the missing backend.
func CheckRoute(t *testing.T, conn grpc.ClientConnInterface) {
	t.Helper()
	ctx := context.Background()
	hdr, err := Echo(ctx, conn, "/helloworld.Greeter/SayHello", "x-canary", "yes", "x-gone", "1")
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{"x-backend": "v2", "seen-x-route": "canary", "seen-x-gone": "", "x-resp": "r"} {
		if got := strings.Join(hdr.Get(k), ","); got != want {
			t.Errorf("canary call: response header %s = %q, want %q (all: %v)", k, got, want, hdr)
		}
	}
	if hdr, err := Echo(ctx, conn, "/helloworld.Greeter/SayHello"); err != nil || strings.Join(hdr.Get("x-backend"), "") != "v1" {
		t.Fatalf("call without the header: %v %v, want v1", hdr, err)
	}

	counts := map[string]int{}
	for range 2000 {
		hdr, err := Echo(ctx, conn, "/helloworld.Greeter/Split")
		if err != nil {
			t.Fatal(err)
		}
		counts[strings.Join(hdr.Get("x-backend"), "")]++
	}
	// 10% of 2,000 is 200, with a standard deviation of 13.4.
	if counts["v2"] < 140 || counts["v2"] > 260 {
		t.Fatalf("split calls by backend %v, want v2 at 10%% (140..260 of 2000)", counts)
	}

	ok, failed := 0, 0
	for range 400 {
		_, err := Echo(ctx, conn, "/helloworld.Greeter/Half")
		switch {
		case err == nil:
			ok++
		case status.Code(err) == codes.Unavailable && strings.Contains(err.Error(), "default/missing:50051"):
			failed++
		default:
			t.Fatalf("call with half to a missing backend: %v, want success or UNAVAILABLE naming default/missing:50051", err)
		}
	}
	if ok < 140 || failed < 140 {
		t.Fatalf("%d calls went through and %d failed, want about half each", ok, failed)
	}
}
