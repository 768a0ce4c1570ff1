package proxy

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/internal/policytest"
)

// TestXDSGRPCRoute: a GRPCRoute attached to a Service, through Ballast's
// control plane (registry → policy model → xDS) and the sidecar's xDS
// client: a method and header match with its request and response
// filters as the server and client see them, a 90/10 split, and a backend
// that does not exist failing its half of the calls with UNAVAILABLE
// naming it.
func TestXDSGRPCRoute(t *testing.T) {
	const nodeID = "ballast~client.default"
	reg := discovery.NewRegistry()
	reg.Set(echoService("greeter", startEchoBackend(t, "v1")))
	reg.Set(echoService("greeter-v2", startEchoBackend(t, "v2")))
	rt := &gatewayv1.GRPCRoute{}
	if err := yaml.UnmarshalStrict([]byte(`
parentRefs: [{group: "", kind: Service, name: greeter}]
rules:
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
`), &rt.Spec); err != nil {
		t.Fatal(err)
	}
	rt.Name, rt.Namespace, rt.Generation = "canary", "default", 1
	rt.CreationTimestamp = metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	reg.SetRoute(rt)

	cp := startBallastControlPlane(t, nodeID, reg.List()...)
	_, addr := startOutbound(t, XDSTarget("greeter", "default", 50051), Options{XDS: runXDSClient(t, cp, nodeID)})
	conn := dial(t, addr)

	hdr, err := policytest.Echo(t.Context(), conn, "/helloworld.Greeter/SayHello", "x-canary", "yes", "x-gone", "1")
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{"x-backend": "v2", "seen-x-route": "canary", "seen-x-gone": "", "x-resp": "r"} {
		if got := strings.Join(hdr.Get(k), ","); got != want {
			t.Errorf("canary call: response header %s = %q, want %q (all: %v)", k, got, want, hdr)
		}
	}
	if hdr, err := policytest.Echo(t.Context(), conn, "/helloworld.Greeter/SayHello"); err != nil || strings.Join(hdr.Get("x-backend"), "") != "v1" {
		t.Fatalf("call without the header: %v %v, want v1", hdr, err)
	}

	counts := map[string]int{}
	for range 2000 {
		hdr, err := policytest.Echo(t.Context(), conn, "/helloworld.Greeter/Split")
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
		_, err := policytest.Echo(t.Context(), conn, "/helloworld.Greeter/Half")
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

// echoService is Service default/name, port 50051 served by addrs.
func echoService(name string, addrs ...string) *discovery.Service {
	p := discovery.Port{Port: 50051, Protocol: "TCP"}
	for i, a := range addrs {
		p.Endpoints = append(p.Endpoints, discovery.Endpoint{Address: netip.MustParseAddrPort(a), Ready: true, Serving: true, Pod: fmt.Sprintf("%s-%d", name, i)})
	}
	return &discovery.Service{Key: discovery.Key{Namespace: "default", Name: name}, Ports: []discovery.Port{p}}
}
